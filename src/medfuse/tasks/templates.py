"""Phrasings of the instruction tasks, in English and Chinese.

Everything a task sample says that does not come from the case lives here, as data:
the questions (user prompts, several per task and language, chosen by the builder's
seeded RNG), the system prompts, the diagnosis prompt variants, and the words used to
describe evidence in answers (interpretations, rhythms, findings, vital signs).

Rules the builder relies on:
- A question is one paragraph. Fields in braces (``{region}``, ``{label}``,
  ``{label_zh}``) are filled from the case; the modality placeholders (``<ecg>``,
  ``<cxr>``, ...) are literal and are replaced by fused tokens in the model.
- Every question of a per-modality task holds that modality's placeholder; report
  questions also hold ``<clue>`` (TRRG's disease clues). A text-to-region question names
  the finding as ``<ref>{label}</ref>`` with the canonical (English) label, the label its
  answer must repeat, in both languages.
- No text that ends up in an assistant target contains a digit: every number a target
  states must come from the case (the numeric faithfulness test checks this). Chinese
  stages are therefore written with Chinese numerals (``高血压一期``).
"""

from __future__ import annotations

# ---------------------------------------------------------------------------- system prompts

SYSTEM: dict[str, tuple[str, ...]] = {
    "en": (
        "You are a careful medical expert.",
        "You are a clinical assistant that reads physiological signals, images and test results.",
        "You are an experienced physician. State only what the patient's data show.",
    ),
    "zh": (
        "你是一名严谨的医学专家。",
        "你是一名能够解读生理信号、影像和检验结果的临床助手。",
        "你是一名经验丰富的医生，只陈述患者数据所显示的内容。",
    ),
}

# ---------------------------------------------------------------------------- questions

# task -> lang -> questions. Keys ending in ":values" are asked with the modality's measured
# evidence listed below the question (MEASUREMENTS), and their answers cite the values; the
# plain keys are asked from the fused tokens alone, and their answers are qualitative, so a
# model never learns to state a number that its input does not show.
QUESTIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "ecg_qa": {
        "en": (
            "What does this ECG <ecg> show?",
            "Interpret the electrocardiogram <ecg>: rhythm, rate, intervals and ST/T changes.",
            "Here is the patient's 12-lead ECG <ecg>. Describe its findings.",
        ),
        "zh": (
            "这份心电图 <ecg> 显示了什么？",
            "请解读心电图 <ecg>：节律、心率、各间期及 ST-T 改变。",
            "这是患者的十二导联心电图 <ecg>，请描述其表现。",
        ),
    },
    "ecg_qa:values": {
        "en": (
            "The ECG <ecg> and its measurements are given below. Which readings are abnormal, and what could they point to?",
            "Read the ECG <ecg> with the measured values below and summarise rate, rhythm, intervals and ST/T.",
        ),
        "zh": (
            "下面给出心电图 <ecg> 及其测量值。哪些读数异常，可能提示什么？",
            "请结合下列测量值解读心电图 <ecg>，概括心率、节律、间期和 ST-T。",
        ),
    },
    "labs_qa": {
        "en": (
            "Which of these laboratory results <labs> are abnormal?",
            "Summarise the lab panel <labs>: what is out of range and what might it suggest?",
            "Review the blood tests <labs> and flag any abnormal result.",
        ),
        "zh": (
            "这些化验结果 <labs> 中哪些异常？",
            "请概括化验结果 <labs>：哪些超出参考范围，可能提示什么？",
            "请审阅血液检查 <labs>，标出异常结果。",
        ),
    },
    "labs_qa:values": {
        "en": (
            "The lab results <labs> are listed below. Which are abnormal (value, unit, flag) and what do they suggest?",
            "Interpret these laboratory values <labs>, citing each abnormal value with its unit and flag.",
        ),
        "zh": (
            "化验结果 <labs> 如下。哪些异常（数值、单位、标记），提示什么？",
            "请解读这些化验值 <labs>，逐项引用异常值及其单位和标记。",
        ),
    },
    "vitals_qa": {
        "en": (
            "What do the vital signs <vitals> show?",
            "Assess the vital signs <vitals>: fever, heart and breathing rate, oxygen saturation, blood pressure "
            "stage and the sepsis screens (SIRS, qSOFA).",
            "Are the vital signs <vitals> concerning?",
        ),
        "zh": (
            "生命体征 <vitals> 显示了什么？",
            "请评估生命体征 <vitals>：体温、心率、呼吸频率、血氧饱和度、血压分级及脓毒症筛查（SIRS、qSOFA）。",
            "这些生命体征 <vitals> 是否令人担忧？",
        ),
    },
    "vitals_qa:values": {
        "en": (
            "The vital signs <vitals> are listed below. Which readings are abnormal, and are SIRS or qSOFA positive?",
            "Interpret the measured vital signs <vitals> below: blood pressure stage, fever and the sepsis screens.",
        ),
        "zh": (
            "生命体征 <vitals> 如下。哪些读数异常？SIRS 或 qSOFA 是否阳性？",
            "请解读下列生命体征测量值 <vitals>：血压分级、发热情况及脓毒症筛查。",
        ),
    },
    "cxr_qa": {
        "en": (
            "What abnormalities does this chest X-ray <cxr> show?",
            "Describe the findings on the chest radiograph <cxr>.",
            "Is there anything abnormal on this chest film <cxr>?",
        ),
        "zh": (
            "这张胸片 <cxr> 有哪些异常？",
            "请描述胸片 <cxr> 的所见。",
            "这张胸部X线片 <cxr> 有异常吗？",
        ),
    },
    "region_to_text": {
        "en": (
            "What is {region} in the chest X-ray <cxr>?",
            "Chest X-ray <cxr>. Name the finding in the region {region}.",
            "Identify the abnormality inside {region} on this radiograph <cxr>.",
        ),
        "zh": (
            "胸片 <cxr> 中 {region} 是什么？",
            "胸片 <cxr>。请说出区域 {region} 内的所见。",
            "请识别这张胸片 <cxr> 上 {region} 内的异常。",
        ),
    },
    "text_to_region": {
        "en": (
            "Locate <ref>{label}</ref> in the chest X-ray <cxr>.",
            "Where is the <ref>{label}</ref> on this radiograph <cxr>? Answer with "
            "<ref>label</ref><box>[[x1, y1, x2, y2]]</box>.",
            "Find <ref>{label}</ref> in <cxr> and give its bounding box on the 0-999 grid.",
        ),
        "zh": (
            "请在胸片 <cxr> 中定位 <ref>{label}</ref>（{label_zh}）。",
            "这张胸片 <cxr> 上的{label_zh}（<ref>{label}</ref>）在哪里？请用 <ref>label</ref><box>[[x1, y1, x2, y2]]</box> 回答。",
            "在 <cxr> 中找出 <ref>{label}</ref>（{label_zh}），给出它在 0-999 坐标上的边界框。",
        ),
    },
    "grounded_report": {
        "en": (
            "Write a grounded report for the chest X-ray <cxr>: follow each finding with "
            "<ref>label</ref><box>[[x1, y1, x2, y2]]</box>.",
            "Report this radiograph <cxr> and localise every finding with its box (0-999 grid).",
            "Generate a report for <cxr> in which each abnormality is grounded by a bounding box.",
        ),
        "zh": (
            "请为胸片 <cxr> 撰写带定位的报告：每个所见后给出 <ref>label</ref><box>[[x1, y1, x2, y2]]</box>。",
            "请报告这张胸片 <cxr>，并用边界框（0-999 坐标）标出每个所见。",
            "为 <cxr> 生成报告，每个异常都用边界框定位。",
        ),
    },
    "report": {
        "en": (
            "Write the radiology report (FINDINGS and IMPRESSION) for this chest X-ray <cxr>. Disease clues: <clue>.",
            "Chest radiograph <cxr>, disease clues <clue>. Generate the findings and the impression.",
            "Please report this chest film <cxr> (clues: <clue>).",
        ),
        "zh": (
            "请为这张胸片 <cxr> 撰写放射学报告（检查所见和印象）。疾病线索：<clue>。",
            "胸片 <cxr>，疾病线索 <clue>。请生成检查所见与印象。",
            "请出具这张胸部X线片 <cxr> 的报告（线索：<clue>）。",
        ),
    },
}

# The label written inside <ref> of a region prompt ("What is <ref>this</ref><box>...").
REGION_REF = {"en": "this", "zh": "此处"}

# Heading of the measured-evidence block under a ":values" question.
MEASUREMENTS = {"en": "Measurements", "zh": "测量值"}

# ---------------------------------------------------------------------------- diagnosis

# Alternatives to the exact `medfuse diagnose` prompt: (system, instruction) pairs. The
# instruction replaces the diagnose prompt's task paragraph; the rest of the prompt
# (inputs, evidence, notes, candidates, box request) stays as inference writes it.
DIAGNOSIS_VARIANTS: dict[str, tuple[tuple[str, str], ...]] = {
    "en": (
        ("You are a clinical decision-support assistant. Reason from the measured evidence only.",
         "Think through the evidence inside <think></think>, citing only the values listed above; then list every "
         "candidate disease the patient has inside <answer></answer>, separated by ';' (write <answer>none</answer> "
         "if none applies)."),
        ("You are an experienced physician reviewing a multimodal patient record.",
         "Which of the candidate diseases does this patient have? Explain your reasoning in <think></think> using only "
         "the cited values, then answer inside <answer></answer> with the names separated by ';', or "
         "<answer>none</answer>."),
        ("You are a medical expert who links every conclusion to its evidence.",
         "Give a multi-disease diagnosis: the chain of evidence in <think></think>, then the diseases from the "
         "candidate list in <answer></answer>, separated by ';'; <answer>none</answer> for no disease."),
    ),
    "zh": (
        ("你是一名临床决策支持助手，只依据测得的证据推理。",
         "请在 <think></think> 中梳理证据，只引用上面列出的数值；然后在 <answer></answer> 中列出患者所患的全部候选疾病，"
         "用 ';' 分隔（都不符合时写 <answer>none</answer>）。"),
        ("你是一名经验丰富的医生，正在审阅患者的多模态病历。",
         "该患者患有哪些候选疾病？请在 <think></think> 中只用引用的数值说明推理，再在 <answer></answer> 中给出疾病名称，"
         "用 ';' 分隔，或写 <answer>none</answer>。"),
        ("你是一名医学专家，每个结论都要对应证据。",
         "请给出多疾病诊断：先在 <think></think> 中写出证据链，再在 <answer></answer> 中给出候选列表中的疾病，"
         "用 ';' 分隔；无疾病时写 <answer>none</answer>。"),
    ),
}

# Probability that a diagnosis sample uses the exact inference prompt of `medfuse diagnose`
# (training must match inference most of the time; the variants add robustness).
EXACT_DIAGNOSIS_PROMPT_P = 0.6

# Sentences of the diagnosis chain of evidence (inside <think>).
THINK = {
    "en": {
        "abnormal": "Abnormal evidence: {items}.",
        "no_abnormal": "No measured item is abnormal.",
        "image": "Chest X-ray: {findings}.",
        "image_clear": "Chest X-ray: no abnormality is marked.",
        "supports": "{disease}: supported by {items}.",
        # A gold disease without supporting evidence: say so, and claim nothing about why.
        "unsupported": "{disease}: no measured item above shows it directly.",
        "nonspecific": "Not specific for a candidate disease here: {items}.",
        "healthy": "Taken together, the data support none of the candidate diseases.",
        "conclusion": "Diagnoses: {diseases}.",
        # A rationale line of the decision-conditioned format (the header is the scaffold's).
        "rationale": "{header} supported by {items}.",
        "rationale_unsupported": "{header} no listed evidence item shows it directly.",
        "sep": "; ",
        "list_sep": ", ",
    },
    "zh": {
        "abnormal": "异常证据：{items}。",
        "no_abnormal": "没有异常的测量项目。",
        "image": "胸片：{findings}。",
        "image_clear": "胸片：未标出异常。",
        "supports": "{disease}：{items}支持该诊断。",
        "unsupported": "{disease}：上面测得的证据未直接显示该病。",
        "nonspecific": "以下异常对候选疾病不具特异性：{items}。",
        "healthy": "综合来看，数据不支持任何候选疾病。",
        "conclusion": "诊断：{diseases}。",
        "rationale": "{header}{items}支持该诊断。",
        "rationale_unsupported": "{header}列出的证据未直接显示该病。",
        "sep": "；",
        "list_sep": "、",
    },
}

# ---------------------------------------------------------------------------- answers

ANSWER = {
    "en": {
        "rhythm": "Rhythm: {rhythm}.",
        "rate": "Heart rate: {reading}.",
        "intervals": "Intervals: {items}.",
        "st_t": "ST/T: {items}.",
        "st_t_normal": "ST/T: no ST deviation or T-wave abnormality.",
        "lvh": "LVH voltage criteria met: {items}.",
        "voltage": "Voltage: {items}.",
        "quality": "Signal quality: {reading}.",
        "abnormal": "Abnormal: {items}.",
        "all_normal": "All readings are within normal limits.",
        "unreadable": "The recording cannot be interpreted.",
        "labs_normal": "No result is flagged abnormal.",
        "suggests": "These can point to {diseases}.",
        "screen": "{name}: {reading}",
        "criteria_met": "criteria met: {items}",
        "criteria_missing": "not assessed: {items}",
        "findings": "Findings: {items}.",
        "no_findings": "No abnormality is seen.",
        "sep": "; ",
        "list_sep": ", ",
        "or": " or ",
    },
    "zh": {
        "rhythm": "节律：{rhythm}。",
        "rate": "心率：{reading}。",
        "intervals": "间期：{items}。",
        "st_t": "ST-T：{items}。",
        "st_t_normal": "ST-T：未见 ST 段偏移或 T 波异常。",
        "lvh": "符合左心室肥厚电压标准：{items}。",
        "voltage": "电压：{items}。",
        "quality": "信号质量：{reading}。",
        "abnormal": "异常：{items}。",
        "all_normal": "各项读数均在正常范围内。",
        "unreadable": "该记录无法判读。",
        "labs_normal": "没有标记为异常的结果。",
        "suggests": "这些可能提示{diseases}。",
        "screen": "{name}：{reading}",
        "criteria_met": "符合标准：{items}",
        "criteria_missing": "未评估：{items}",
        "findings": "所见：{items}。",
        "no_findings": "未见明显异常。",
        "sep": "；",
        "list_sep": "、",
        "or": "或",
    },
}

# Report sections for reports written from labelled findings (when the case's own report is
# in the other language, or missing).
REPORT = {
    "en": {"findings": "FINDINGS: ", "impression": "IMPRESSION: ", "normal_findings": "No abnormality is seen.",
           "normal_impression": "No acute cardiopulmonary abnormality.", "sentence_end": ".", "join": " "},
    "zh": {"findings": "检查所见：", "impression": "印象：", "normal_findings": "未见明显异常。",
           "normal_impression": "心肺未见明显异常。", "sentence_end": "。", "join": ""},
}

# ---------------------------------------------------------------------------- vocabulary

# Evidence interpretations (and ECG rhythms) in Chinese; English uses them as written, with
# underscores as spaces.
INTERPRETATION_ZH: dict[str, str] = {
    "normal": "正常", "high": "偏高", "low": "偏低", "critically high": "危急偏高", "critically low": "危急偏低",
    "abnormal": "异常", "critically abnormal": "危急异常", "indeterminate": "不确定", "short": "缩短",
    "prolonged": "延长", "present": "存在", "absent": "缺失", "LVH": "左心室肥厚", "positive": "阳性",
    "negative": "阴性", "fever": "发热", "hypothermia": "低体温", "tachycardia": "心动过速",
    "bradycardia": "心动过缓", "tachypnoea": "呼吸急促", "bradypnoea": "呼吸过缓", "hypoxaemia": "低氧血症",
    "elevated": "血压升高", "stage 1 hypertension": "高血压一期", "stage 2 hypertension": "高血压二期",
    "hypertensive crisis": "高血压危象", "good": "良好", "acceptable": "尚可", "poor": "差",
    "sinus_rhythm": "窦性心律", "sinus_tachycardia": "窦性心动过速", "sinus_bradycardia": "窦性心动过缓",
    "atrial_fibrillation": "心房颤动", "other": "其他节律", "unreadable": "无法判读",
    "oncogenic driver": "致癌驱动突变", "benign": "良性", "uncertain significance": "意义未明",
}

# Evidence item names (vital signs, ECG measurements) -> (English, Chinese) display.
ITEM_NAMES: dict[str, tuple[str, str]] = {
    "temperature": ("temperature", "体温"),
    "heart_rate": ("heart rate", "心率"),
    "resp_rate": ("respiratory rate", "呼吸频率"),
    "spo2": ("SpO2", "血氧饱和度"),
    "blood_pressure": ("blood pressure", "血压"),
    "sbp": ("systolic blood pressure", "收缩压"),
    "wbc": ("white cell count", "白细胞计数"),
    "altered_mentation": ("mentation", "意识状态"),
    "rhythm": ("rhythm", "节律"),
    "P waves": ("P waves", "P波"),
    "PR interval": ("PR interval", "PR间期"),
    "QRS duration": ("QRS duration", "QRS时限"),
    "QT interval": ("QT interval", "QT间期"),
    "QTc (Bazett)": ("QTc (Bazett)", "QTc（Bazett）"),
    "QTc (Fridericia)": ("QTc (Fridericia)", "QTc（Fridericia）"),
    "ST elevation": ("ST elevation", "ST段抬高"),
    "ST depression": ("ST depression", "ST段压低"),
    "T inversion": ("T inversion", "T波倒置"),
    "tall T wave": ("tall T waves", "T波高尖"),
    "pathological Q wave": ("pathological Q waves", "病理性Q波"),
    "Sokolow-Lyon voltage (S V1 + R V5/V6)": ("Sokolow-Lyon", "Sokolow-Lyon 标准"),
    "Cornell voltage (R aVL + S V3)": ("Cornell", "Cornell 标准"),
    "signal quality": ("signal quality", "信号质量"),
}

# ECG findings reported per lead (item = "<label> <lead>").
ECG_LEAD_FINDINGS: tuple[str, ...] = ("ST elevation", "ST depression", "T inversion", "tall T wave",
                                      "pathological Q wave")

# Image finding labels -> Chinese (synthetic labels first, then common public-dataset labels).
FINDING_ZH: dict[str, str] = {
    "consolidation": "实变", "cardiomegaly": "心脏增大", "pleural effusion": "胸腔积液",
    "pulmonary edema": "肺水肿", "nodule": "结节", "mass": "肿块", "atelectasis": "肺不张",
    "effusion": "积液", "infiltration": "浸润", "infiltrate": "浸润", "pneumothorax": "气胸",
    "pneumonia": "肺炎", "emphysema": "肺气肿", "fibrosis": "纤维化", "edema": "水肿",
    "pleural thickening": "胸膜增厚", "hernia": "疝", "tuberculosis": "结核",
}

# Words that mention a finding in a report's text (where a grounded report puts its box),
# longest first so that '实变影' wins over '实变'.
FINDING_MENTIONS: dict[str, tuple[str, ...]] = {
    "consolidation": ("consolidation", "实变影", "实变"),
    "nodule": ("nodule", "结节影", "结节"),
    "mass": ("mass", "肿块影", "肿块"),
    "pleural effusion": ("pleural effusions", "pleural effusion", "effusion", "胸腔积液", "液体密度影", "肋膈角变钝"),
    "pulmonary edema": ("interstitial oedema", "oedema", "edema", "perihilar haziness", "Kerley B线", "肺水肿"),
    "cardiomegaly": ("heart is enlarged", "cardiomegaly", "enlarged", "心影增大", "心脏增大"),
}

# Findings whose location (side and zone of the box) is worth saying; the heart and
# oedema are central or bilateral by nature.
LOCATED_FINDINGS_EXCLUDED: frozenset[str] = frozenset({"cardiomegaly", "pulmonary edema"})

SIDES = {"en": {"right": "right", "left": "left", "both": "bilateral"}, "zh": {"right": "右", "left": "左", "both": "双侧"}}
ZONES = {"en": ("upper", "mid", "lower"), "zh": ("上", "中", "下")}


def interpretation(word: str, lang: str) -> str:
    """An evidence interpretation (or rhythm) in `lang`."""
    if lang == "zh":
        return INTERPRETATION_ZH.get(word, word.replace("_", " "))
    return word.replace("_", " ")


def finding_name(label: str, lang: str) -> str:
    """An image finding label in `lang` (the label itself when no translation is known)."""
    if lang == "zh":
        return FINDING_ZH.get(label.lower(), label)
    return label


def location(label: str, boxes: list[list[int]], lang: str) -> str | None:
    """'left mid zone' / '左中肺野' for a finding's boxes (patient's side: image left is the
    patient's right on a frontal film), or None for findings that have no useful side."""
    if not boxes or label in LOCATED_FINDINGS_EXCLUDED:
        return None
    sides = {"right" if (b[0] + b[2]) / 2 < 500 else "left" for b in boxes}
    side = SIDES[lang]["both" if len(sides) == 2 else sides.pop()]
    cy = (boxes[0][1] + boxes[0][3]) / 2
    zone = ZONES[lang][0 if cy < 380 else (1 if cy < 540 else 2)]
    if label in ("pleural effusion", "effusion"):  # an effusion has a side, not a zone
        return side if lang == "en" or side == "双侧" else f"{side}侧"
    return f"{side} {zone} zone" if lang == "en" else f"{side}{zone}肺野"
