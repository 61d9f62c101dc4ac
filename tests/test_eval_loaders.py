"""Every benchmark loader on a small fixture in the benchmark's exact public format."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest

from medfuse.errors import InputError, MedfuseError
from medfuse.eval.benchmarks import get_benchmark, list_benchmarks
from medfuse.eval.prompts import PROMPT_VERSION, build_prompt
from medfuse.record.case import CXRImage, Diagnosis, Finding, Labels, LabResult, Note, PatientCase
from medfuse.record.store import write_case, write_index


def load(name, path, **kw):
    bench = get_benchmark(name)
    return bench, bench.load(path, **kw)


def test_registry_lists_every_task_type_and_rejects_unknown_names():
    kinds = {b.task_type for b in list_benchmarks()}
    assert kinds == {"diagnosis", "report", "vqa", "multiple_choice", "grounding"}
    assert get_benchmark("MMLU_medical").name == "mmlu-medical"
    with pytest.raises(MedfuseError, match="unknown benchmark"):
        get_benchmark("no-such-bench")


def test_medqa_5_and_4_options(fixtures):
    bench, items = load("medqa", fixtures / "benchmarks/medqa/US")
    assert [it.gold for it in items] == ["B", "C"]
    assert list(items[0].options) == list("ABCDE")
    assert bench.skipped == {"gold answer missing or not an option": 1}  # answer_idx "F"
    _, four = load("medqa", fixtures / "benchmarks/medqa/US/4_options/phrases_no_exclude_test.jsonl")
    # The 4-option file re-letters the answer: the same question has gold B there, C in the 5-option file.
    assert [it.gold for it in four] == ["B", "A"] and len(four[0].options) == 4
    _, one = load("medqa", fixtures / "benchmarks/medqa/US", limit=1)
    assert len(one) == 1


def test_medmcqa_cop_is_one_based(fixtures):
    _, items = load("medmcqa", fixtures / "benchmarks/medmcqa")
    assert [it.gold for it in items] == ["B", "D", "A"]  # cop 2, 4, 1
    assert items[0].options["B"] == "Ethosuximide"
    assert items[1].metadata == {"subject_name": "Pathology", "choice_type": "single"}  # null topic dropped


def test_medmcqa_hf_zero_based_form(tmp_path, fixtures):
    rows = [json.loads(line) for line in (fixtures / "benchmarks/medmcqa/dev.json").read_text().splitlines()]
    for r in rows:
        r["cop"] -= 1  # the HF ClassLabel form
    rows.append({**rows[0], "id": "hidden", "cop": -1})
    (tmp_path / "dev.json").write_text("\n".join(json.dumps(r) for r in rows))
    bench, items = load("medmcqa", tmp_path / "dev.json")
    assert [it.gold for it in items] == ["B", "D", "A"]
    assert bench.skipped == {"no answer (cop missing or hidden)": 1}


def test_pubmedqa_test_split_uses_ground_truth_keys(fixtures):
    _, items = load("pubmedqa", fixtures / "benchmarks/pubmedqa")
    assert [(it.id, it.gold) for it in items] == [("21645374", "yes"), ("16418930", "no"), ("19130332", "maybe")]
    assert items[0].answer_type == "yes_no_maybe"
    assert "Results: Patients receiving statins" in items[0].context
    assert "LONG_ANSWER" not in items[0].context and "fewer episodes" not in items[0].context
    _, everything = load("pubmedqa", fixtures / "benchmarks/pubmedqa", split="all")
    assert len(everything) == 4


def test_mmlu_reads_only_medical_subjects_from_headerless_csv(fixtures):
    _, items = load("mmlu-medical", fixtures / "benchmarks/mmlu")
    assert {it.metadata["subject"] for it in items} == {"anatomy", "clinical_knowledge"}  # physics left out
    assert len(items) == 4
    assert items[1].question.startswith("Which of the following structures passes through the foramen magnum, the")
    assert items[1].gold == "B" and items[1].options["B"] == "Spinal cord"


def test_vqa_rad_official_test_split_and_closed_detection(fixtures):
    bench, items = load("vqa-rad", fixtures / "benchmarks/vqa_rad")
    assert [it.id for it in items] == ["0001", "0002", "0003"]  # phrase_type test_*; 0004's image is missing
    assert [it.answer_type for it in items] == ["closed", "open", "open"]
    assert items[2].gold == "2"  # a numeric answer read as text
    assert bench.skipped == {"image file not found": 1}
    assert all(p.endswith(".jpg") for it in items for p in it.images)
    _, train = load("vqa-rad", fixtures / "benchmarks/vqa_rad", split="train")
    assert [it.id for it in train] == ["0005"]


def test_slake_languages_and_closed_answers(fixtures):
    _, items = load("slake", fixtures / "benchmarks/slake/Slake1.0")
    assert {it.lang for it in items} == {"en", "zh"} and len(items) == 4  # xmlab3 has no image
    _, en = load("slake", fixtures / "benchmarks/slake/Slake1.0", lang="en")
    assert [(it.gold, it.answer_type) for it in en] == [("Lung", "closed"), ("Pneumonia", "open")]
    _, zh = load("slake", fixtures / "benchmarks/slake/Slake1.0", lang="zh")
    assert zh[0].gold == "是" and "成像方式" in build_prompt(zh[1]).user and "请用一个词" in build_prompt(zh[1]).user


def test_pathvqa_pickle_release(fixtures):
    bench, items = load("pathvqa", fixtures / "benchmarks/pathvqa")
    assert [(it.gold, it.answer_type) for it in items] == [("yes", "closed"), ("granuloma", "open"), ("no", "closed")]
    assert bench.skipped == {"image file not found": 1}


def test_pathvqa_refuses_pickles_that_import_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (shutil.rmtree, ("/nonexistent",))

    (tmp_path / "qas" / "test").mkdir(parents=True)
    (tmp_path / "qas" / "test" / "test_qa.pkl").write_bytes(pickle.dumps([Evil()]))
    with pytest.raises(InputError, match="not a plain pickled QA list"):
        get_benchmark("pathvqa").load(tmp_path)


def test_pmc_vqa_v2_letter_or_text_answers_and_v1(fixtures):
    _, items = load("pmc-vqa", fixtures / "benchmarks/pmc_vqa")
    assert [it.gold for it in items] == ["A", "B", "C"]  # "Peripheral" (text) maps to B
    assert items[0].options == {"A": "CT", "B": "MRI", "C": "Ultrasound", "D": "PET"}  # prefixes stripped
    _, v1 = load("pmc-vqa", fixtures / "benchmarks/pmc_vqa", split="test_clean")
    assert [it.gold for it in v1] == ["A", "C"]


def test_omnimedvqa_maps_answer_text_to_letter(fixtures):
    bench, items = load("omnimedvqa", fixtures / "benchmarks/omnimedvqa")
    by_id = {it.id: it for it in items}
    assert by_id["ChestXray_1"].gold == "B"
    assert by_id["ChestXray_2"].gold == "A"  # "pneumonia" vs "Pneumonia"
    assert by_id["Chest CT Scan_1"].metadata["modality_type"] == "CT"  # the `modality` key quirk
    assert bench.skipped == {"gt_answer matches no single option": 1}


def test_r2gen_iu_uses_two_images_mimic_one(fixtures):
    bench, iu = load("r2gen", fixtures / "benchmarks/r2gen/iu_xray")
    assert [it.id for it in iu] == ["CXR1_1_IM-0001"] and len(iu[0].images) == 2
    assert bench.skipped == {"image file not found": 1, "empty report": 1}
    _, mimic = load("r2gen", fixtures / "benchmarks/r2gen/mimic_cxr/annotation.json")
    assert len(mimic) == 1 and len(mimic[0].images) == 1 and mimic[0].metadata["study_id"] == 50414267


def test_findings_impression_csv(fixtures):
    bench, items = load("findings-impression", fixtures / "benchmarks/findings_impression/test.csv")
    assert [it.id for it in items] == ["s1", "s2", "s4"]
    assert items[0].gold == "Findings: Heart size is normal. Lungs are clear. Impression: No acute cardiopulmonary process."
    assert items[1].gold == "Right lower lobe pneumonia."
    assert bench.skipped == {"findings and impression both empty": 1}


def test_medtvt_qa_gold_from_answer_tag(fixtures):
    bench, items = load("medtvt-qa", fixtures / "benchmarks/medtvt_qa")
    assert items[0].gold == ["atrial fibrillation", "hypertension"]
    assert items[1].gold == ["acute renal failure", "pneumonia", "sepsis"]
    assert len(items[0].candidates) == 7 and items[0].metadata["ecg"]
    assert bench.skipped == {"no user question or no <answer> in the assistant turn": 1}


def test_coco_grounding_converts_xywh_pixels_to_grid(fixtures):
    bench, items = load("coco-grounding", fixtures / "benchmarks/coco/annotations.json")
    by_id = {it.id: it for it in items}
    # [20, 10, 40, 20] on a 200x100 image -> x 20..60 of 200, y 10..30 of 100 on the 0-999 grid.
    assert by_id["7-nodule"].gold == [[100, 100, 300, 300], [599, 500, 749, 799]]
    assert by_id["7-pleural_effusion"].gold == [[0, 599, 999, 999]]
    assert by_id["9-nodule"].gold == [[100, 100, 200, 200]]
    assert bench.skipped == {"iscrowd region (ignore region)": 1}
    assert "<ref>nodule</ref>" in build_prompt(by_id["7-nodule"]).user


@pytest.fixture
def cohort(tmp_path):
    """A three-case cohort with labels, findings with boxes and images."""
    root = tmp_path / "cohort"
    pixels = np.zeros((32, 32), dtype=np.uint8)
    cases = [
        PatientCase(case_id="c1", labels=Labels(diagnoses=[Diagnosis(name="pneumonia"), Diagnosis(name="sepsis")],
                                                findings=[Finding(label="consolidation", boxes=[[100, 200, 400, 600]])]),
                    cxr=[CXRImage(pixels=pixels)], labs=[LabResult(name="Lactate", value=3.1, unit="mmol/L", flag="H")],
                    notes=[Note(text="Cough and fever for three days.", type="history")]),
        PatientCase(case_id="c2", labels=Labels(diagnoses=[Diagnosis(name="hypertension"),
                                                           Diagnosis(name="gout", in_panel=False)])),
        PatientCase(case_id="c3"),
    ]
    for c in cases:
        write_case(c, root / c.case_id)
    write_index(root)
    return root


def test_cohort_diagnosis_gold_and_case_text(cohort):
    bench, items = load("medfuse-cohort", cohort, split="all")
    assert [(it.id, it.gold) for it in items] == [("c1", ["pneumonia", "sepsis"]), ("c2", ["hypertension"])]
    assert bench.skipped == {"case has no labels": 1}
    text = items[0].context
    assert "Lactate: 3.1 mmol/L [H]" in text and "Cough and fever" in text
    assert "pneumonia" not in text.lower() and "consolidation" not in text  # labels never leak into the prompt
    assert len(items[0].candidates) == 9 and len(items[0].images) == 1


def test_cohort_grounding_items(cohort):
    _, items = load("cohort-grounding", cohort, split="all")
    assert [(it.id, it.gold) for it in items] == [("c1-0-consolidation", [[100, 200, 400, 600]])]


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("medqa", "{not json\n", "invalid JSON on line 1"),
        ("medmcqa", '{"question": "q"}\n', "lacks question/opa..opd"),
        ("vqa-rad", '{"a": 1}', "expected a JSON list"),
        ("r2gen", "[]", "expected an object with train/val/test"),
        ("coco-grounding", '{"images": []}', "expected COCO keys"),
        ("pubmedqa", "[1, 2]", "expected an object keyed by PMID"),
    ],
)
def test_bad_files_raise_one_line_input_error(tmp_path, name, content, problem):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(InputError, match=problem) as e:
        get_benchmark(name).load(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_missing_path_and_unknown_split(tmp_path, fixtures):
    with pytest.raises(InputError, match="no such file or folder"):
        get_benchmark("medqa").load(tmp_path / "nope")
    with pytest.raises(InputError, match="has no split 'validation'"):
        get_benchmark("medqa").load(fixtures / "benchmarks/medqa/US", split="validation")


def test_prompts_are_versioned_and_do_not_repeat_listed_options(fixtures):
    _, items = load("medqa", fixtures / "benchmarks/medqa/US")
    p = build_prompt(items[0])
    assert "B. Nitrofurantoin" in p.user and "<answer>" in p.user and PROMPT_VERSION.endswith("/1")
    assert p.cache_hash() == build_prompt(items[0]).cache_hash() != build_prompt(items[1]).cache_hash()
    listed = items[0].model_copy(update={"question": "Q?\nAnswer Choices: (A) x (B) y"})
    assert "B. Nitrofurantoin" not in build_prompt(listed).user


# ------------------------------------------------------------------ the shared loader contract

def test_option_letter_maps_answer_text_only_when_exactly_one_option_matches():
    from medfuse.eval.benchmarks.base import option_letter

    options = {"A": "X-ray", "B": "CT", "C": "ct"}
    assert option_letter(options, " X-ray ") == "A"
    assert option_letter(options, "x-ray", fold=str.casefold) == "A"
    assert option_letter(options, "CT", fold=str.casefold) is None  # B and C both match: no letter
    assert option_letter(options, "MRI") is None and option_letter(options, None) is None


def test_pick_file_and_find_image_look_in_the_release_layout(tmp_path):
    from medfuse.eval.benchmarks.base import find_image, image_roots, pick_file

    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"x")
    (tmp_path / "b.png").write_bytes(b"x")
    (tmp_path / "test.json").write_text("[]")
    assert pick_file(tmp_path, ["test.csv", "test.json"], "no test file") == tmp_path / "test.json"
    assert pick_file(tmp_path / "b.png", ["test.json"], "no test file") == tmp_path / "b.png"  # a file is itself
    with pytest.raises(InputError, match="no annotation.json here"):
        pick_file(tmp_path, ["annotation.json"], "no annotation.json here")
    roots = image_roots(tmp_path, "figures", "images")  # figures/ does not exist
    assert roots == [tmp_path / "images", tmp_path]
    assert find_image(roots, "a.png") == (tmp_path / "images" / "a.png").resolve()
    assert find_image(roots, "b.png") == (tmp_path / "b.png").resolve() and find_image(roots, "c.png") is None


def test_vqa_item_decides_closed_by_yes_no_when_the_release_has_no_answer_type(tmp_path):
    from medfuse.eval.benchmarks.base import VQABenchmark

    bench = get_benchmark("pathvqa")
    assert isinstance(bench, VQABenchmark)
    image = tmp_path / "x.jpg"
    image.write_bytes(b"x")
    yes = bench.vqa_item("1", {"question": "Is it?", "answer": "Yes"}, image)
    other = bench.vqa_item("2", {"question": "What?", "answer": "granuloma"}, image, kind="CLOSED")
    assert (yes.answer_type, yes.metadata, yes.benchmark) == ("closed", {"answer_type": "CLOSED"}, "pathvqa")
    assert other.answer_type == "closed"  # the release's CLOSED wins over the yes/no rule
    assert bench.vqa_item("3", {"question": "", "answer": "no"}, image) is None
    assert bench.vqa_item("4", {"question": "Q?", "answer": "no"}, None) is None
    assert bench.skipped == {"empty question or answer": 1, "image file not found": 1}


def test_limit_stops_reading_a_json_lines_file_early(tmp_path, fixtures):
    good = (fixtures / "benchmarks/medqa/US/test.jsonl").read_text().splitlines()[0]
    (tmp_path / "test.jsonl").write_text(good + "\n{broken\n")
    assert len(get_benchmark("medqa").load(tmp_path, limit=1)) == 1
    with pytest.raises(InputError, match="invalid JSON on line 2"):
        get_benchmark("medqa").load(tmp_path)


def test_record_lacking_the_format_fields_is_a_one_line_error(tmp_path):
    (tmp_path / "test.json").write_text('[{"question": "q", "answer": "a"}]')  # no q_lang
    with pytest.raises(InputError, match=r"record 0 lacks question/answer/q_lang \(not a SLAKE file\)"):
        get_benchmark("slake").load(tmp_path)
