"""The `medfuse` Typer app: every verb, registered from the module that defines it.

Command modules define plain command functions or their own sub-app and never import
this module, so the command modules form no import cycle with it. The registration
order below is the order `medfuse --help` lists the verbs in.
"""

from __future__ import annotations

import typer

from medfuse.cli.calibrate_cmd import calibrate_cmd
from medfuse.cli.demo_cmd import demo
from medfuse.cli.diagnose_cmd import diagnose_cmd
from medfuse.cli.eval_cmd import eval_app
from medfuse.cli.explain_cmd import explain_cmd
from medfuse.cli.federate_cmd import federate_cmd
from medfuse.cli.feedback_cmd import feedback_app
from medfuse.cli.import_dicom import import_dicom_cmd, import_image_cmd
from medfuse.cli.import_ecg import import_ecg_array_cmd, import_wfdb_cmd
from medfuse.cli.import_fhir import import_fhir_cmd
from medfuse.cli.import_labs import import_labs_csv_cmd
from medfuse.cli.import_mimic import import_mimic_cmd
from medfuse.cli.import_real import import_cinc_cmd, import_ieee8023_cmd, import_kermany_cmd, import_nih_cxr_cmd
from medfuse.cli.interpret_cmd import interpret_app
from medfuse.cli.model_cmd import model_app
from medfuse.cli.serve_cmd import serve_cmd
from medfuse.cli.show_cmd import show
from medfuse.cli.synth_cmd import synth
from medfuse.cli.tasks_cmd import tasks_app
from medfuse.cli.train_cmd import train_app

app = typer.Typer(
    name="medfuse",
    help="Multimodal medical reasoning: import, synthesise, interpret, diagnose, train and evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

import_app = typer.Typer(help="Import real-format files into a cohort folder.", no_args_is_help=True)
for _name, _command in (
    ("dicom", import_dicom_cmd),
    ("image", import_image_cmd),
    ("wfdb", import_wfdb_cmd),
    ("ecg-array", import_ecg_array_cmd),
    ("fhir", import_fhir_cmd),
    ("labs-csv", import_labs_csv_cmd),
    ("mimic-iv", import_mimic_cmd),
    ("cinc", import_cinc_cmd),
    ("nih-cxr", import_nih_cxr_cmd),
    ("ieee8023", import_ieee8023_cmd),
    ("kermany", import_kermany_cmd),
):
    import_app.command(_name)(_command)

for _name, _command in (("calibrate", calibrate_cmd), ("demo", demo), ("diagnose", diagnose_cmd),
                         ("explain", explain_cmd), ("federate", federate_cmd), ("serve", serve_cmd), ("show", show),
                         ("synth", synth)):
    app.command(_name)(_command)

for _name, _group in (("import", import_app), ("model", model_app), ("eval", eval_app), ("feedback", feedback_app),
                     ("interpret", interpret_app),
                      ("tasks", tasks_app), ("train", train_app)):
    app.add_typer(_group, name=_name)
