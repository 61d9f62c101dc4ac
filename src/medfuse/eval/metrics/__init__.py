"""Evaluation metrics, one module per task type.

- `classification`: multi-label diagnosis (Jaccard, F1, AUROC/AUPRC, calibration).
- `text_generation`: report generation (BLEU-1..4, METEOR, ROUGE-L, CIDEr).
- `clinical_efficacy`: a rule-based chest X-ray finding labeler and CE precision/recall/F1.
- `vqa`: closed accuracy, open exact match, token recall and F1.
- `multiple_choice`: accuracy with abstentions scored wrong.
- `grounding`: IoU, Hungarian matching, Acc@IoU, precision/recall/F1.

Modules are imported on use (``from medfuse.eval.metrics.vqa import vqa_scores``) so
that scoring multiple choice does not load the text-generation stack.
"""
