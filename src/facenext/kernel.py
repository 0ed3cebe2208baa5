"""Build, push and follow a Kaggle notebook that trains with a FaceNext config on Kaggle's GPU.

``facenext kernel CONFIG`` writes a folder with two parts:

- ``toolkit/``: a Kaggle dataset (``dataset-metadata.json`` + a wheel of FaceNext built here, offline, with
  ``pip wheel --no-deps --no-build-isolation``). torch, timm and albumentations are preinstalled in a notebook, so
  only FaceNext itself is installed, with ``pip install --no-index --no-deps``.
- ``notebook/``: ``kernel-metadata.json`` (GPU on, internet off unless W&B logs the run, the competitions and the
  toolkit dataset as sources) and ``notebook.py``, a script with the config embedded that installs FaceNext from
  ``/kaggle/input/facenext-toolkit``, finds the competition (``data.root=/kaggle/input/<slug>`` when one is
  attached; F26's late-submission twin holds the same data and is not attached by default) and its submission
  format before training (a format that is not known stops it at once, not hours later), trains (runs under
  ``/kaggle/working/runs``, ``train.budget=11h`` unless the config or the command line sets a budget, so that the
  schedule completes), predicts the test images, verifies (pair scores or identity matches) when verification data
  is attached, writes the term's submission file to ``/kaggle/working/submission.csv`` (F26: both parts in one
  file), checks it against the data, and prints the grading description (``facenext.grading``).
  It trains on every GPU of the session (a T4 x2 session: two processes under torchrun, the config's global
  batch split between them) with ``os.cpu_count() // processes`` data workers per process (at least 1; Kaggle's
  4 CPUs give 2 each on T4 x2, 4 on one GPU), and prints what it chose.

With ``wandb`` (``--wandb``, or ``train.log_to`` naming wandb) the notebook's internet is on and training logs to
Weights & Biases with the key from the notebook's Kaggle secret ``WANDB_API_KEY``, so that the printed description
names the run; without it the notebook says that grading needs a W&B run and how to attach one.

``--push`` creates (or versions) the dataset and then pushes the notebook through the ``kaggle`` client;
``facenext kernel-status`` and ``kernel-output`` follow it and fetch its outputs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .errors import UserError
from .kaggle import _mapped_errors, _quiet_client, authenticated_api, config_dir

logger = logging.getLogger(__name__)

TOOLKIT = "facenext-toolkit"  # the dataset's slug, and its folder under /kaggle/input
CODE_FILE = "notebook.py"
PROJECT = Path(__file__).resolve().parents[2]  # the source tree (pyproject.toml) when installed in editable mode
KERNEL_REF = re.compile(r"^[A-Za-z0-9_-]+/[A-Za-z0-9_-]+$")
# Training's share of the 12-hour session when the config sets no train.budget: the schedule is planned to end inside
# it, leaving time to install, predict and verify; train.time_limit (11.5 h there) stays the hard stop.
KAGGLE_BUDGET = "11h"
WANDB_SECRET = "WANDB_API_KEY"  # the Kaggle secret (and environment variable) holding the W&B API key


def kaggle_username(user: str | None = None) -> str:
    """``user``, else the username of the legacy credentials (KAGGLE_USERNAME or kaggle.json)."""
    user = user or os.environ.get("KAGGLE_USERNAME")
    if not user:
        path = config_dir() / "kaggle.json"
        try:
            user = json.loads(path.read_text()).get("username")
        except (OSError, ValueError, AttributeError):
            user = None
    if not user or not re.fullmatch(r"[A-Za-z0-9_-]+", user):
        raise UserError("no Kaggle username: pass --user NAME (or set KAGGLE_USERNAME, or save ~/.kaggle/kaggle.json)")
    return user


def kernel_slug(config: str | Path) -> tuple[str, str]:
    """(slug, title) of the notebook for ``config``; the title resolves to the slug as Kaggle requires."""
    words = re.findall(r"[a-z0-9]+", Path(config).stem.lower())
    return "-".join(["facenext", *words]), " ".join(["FaceNext", *words])


def build_wheel(out_dir: Path, project: Path = PROJECT) -> Path:
    """Build FaceNext's wheel into ``out_dir`` offline, from a copy of the source (nothing written to the tree)."""
    if not (project / "pyproject.toml").is_file():
        raise UserError(
            f"FaceNext's source (pyproject.toml) is not in {project}: run `facenext kernel` from a checkout"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="facenext-wheel.") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md"):
            if (project / name).is_file():
                shutil.copy2(project / name, src / name)
        shutil.copytree(
            project / "src" / "facenext", src / "src" / "facenext", ignore=shutil.ignore_patterns("__pycache__")
        )
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
        result = subprocess.run([*cmd, str(src), "-w", str(out_dir)], capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"building FaceNext's wheel failed ({tail[0][:200]}): check that setuptools is installed")
    wheels = sorted(out_dir.glob("facenext-*.whl"))
    if not wheels:
        raise UserError(f"pip wrote no FaceNext wheel to {out_dir}")
    return wheels[-1]


def _competitions(config: Any, competitions: list[str] | None) -> list[str]:
    if competitions:
        return list(dict.fromkeys(competitions))
    from .competitions import DEFAULT_TERM, family_of, get_term

    term = get_term(config.data.term if config.data.term != "auto" else DEFAULT_TERM)
    # F26's second slug is the late-submission twin of the same competition: attaching both would put two copies of
    # the same data under /kaggle/input. Two slugs of other terms are two competitions, each with its own data.
    return list(family_of(term).distinct_competitions(term))


def notebook_script(
    config_text: str,
    overrides: list[str],
    competitions: list[str],
    run_name: str,
    wandb: bool = False,
    tag: str | None = None,
    terms_text: str | None = None,
) -> str:
    """The notebook's code: installs FaceNext offline, trains, predicts, verifies, writes and checks the submission,
    prints the grading description; with ``wandb`` it logs the run to W&B (key from the Kaggle secrets). With
    ``terms_text`` (the config's data.terms_file) the user's terms travel in the notebook."""
    return NOTEBOOK.format(
        config=json.dumps(config_text),
        terms=json.dumps(terms_text) if terms_text is not None else "None",
        overrides=json.dumps(overrides),
        competitions=json.dumps(competitions),
        toolkit=json.dumps(TOOLKIT),
        run=json.dumps(run_name),
        wandb=repr(bool(wandb)),
        tag=repr(tag),
        secret=json.dumps(WANDB_SECRET),
    )


def kernel_metadata(user: str, slug: str, title: str, competitions: list[str], internet: bool) -> dict[str, Any]:
    """``kernel-metadata.json``: a private GPU script with the competitions and the toolkit dataset attached; the
    internet on only where W&B logging needs it."""
    return {
        "id": f"{user}/{slug}",
        "title": title,
        "code_file": CODE_FILE,
        "language": "python",
        "kernel_type": "script",
        "is_private": True,
        "enable_gpu": True,
        "enable_tpu": False,
        "enable_internet": internet,
        "dataset_sources": [f"{user}/{TOOLKIT}"],
        "competition_sources": competitions,
        "kernel_sources": [],
        "model_sources": [],
    }


def wandb_overrides(log_to: list[str], wandb: bool) -> tuple[bool, list[str]]:
    """(whether the notebook logs to W&B, the override that turns it on): ``--wandb`` adds wandb to train.log_to."""
    if "wandb" in log_to or not wandb:
        return "wandb" in log_to, []
    return True, [f"train.log_to=[{','.join([*log_to, 'wandb'])}]"]


def build_bundle(
    config: str | Path,
    out: str | Path | None = None,
    competitions: list[str] | None = None,
    user: str | None = None,
    overrides: list[str] | None = None,
    wandb: bool = False,
    tag: str | None = None,
) -> dict[str, Any]:
    """Write ``out/notebook`` and ``out/toolkit`` (see the module's docstring); returns a summary (also printed)."""
    from .config import load_config
    from .grading import check_tag

    check_tag(tag)
    overrides = list(overrides or [])
    loaded = load_config(config, overrides)  # refuse a broken config here, not hours later on Kaggle
    if loaded.train.budget is None:
        overrides = [f"train.budget={KAGGLE_BUDGET}", *overrides]
    wandb, extra = wandb_overrides(list(loaded.train.log_to), wandb)
    overrides += extra
    user = kaggle_username(user)
    slug, title = kernel_slug(config)
    slugs = _competitions(loaded, competitions)
    out = Path(out or Path("kernels") / slug)
    notebook, toolkit = out / "notebook", out / "toolkit"
    for folder in (notebook, toolkit):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    wheel = build_wheel(toolkit)
    dataset = {
        "id": f"{user}/{TOOLKIT}",
        "title": "FaceNext toolkit",
        "licenses": [{"name": "other"}],
        "description": "The FaceNext package as a wheel, for `pip install --no-index --no-deps` in a notebook.",
    }
    (toolkit / "dataset-metadata.json").write_text(json.dumps(dataset, indent=2) + "\n")
    metadata = kernel_metadata(user, slug, title, slugs, internet=wandb)
    (notebook / "kernel-metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    terms = Path(loaded.data.terms_file).read_text() if loaded.data.terms_file else None  # load_config read it
    script = notebook_script(Path(config).read_text(), overrides, slugs, Path(config).stem, wandb, tag, terms)
    (notebook / CODE_FILE).write_text(script)
    summary = {"notebook": str(notebook), "toolkit": str(toolkit), "wheel": wheel.name, "kernel": metadata["id"]}
    summary["competitions"] = slugs
    summary["budget"] = loaded.train.budget or KAGGLE_BUDGET
    summary["wandb"] = wandb
    logger.info(
        f"wrote {notebook} (kernel {metadata['id']}, competitions {', '.join(slugs)}) and {toolkit} ({wheel.name})"
    )
    logger.info(
        f"training is planned to end inside train.budget={summary['budget']} (pass train.budget=... to change it)"
    )
    if wandb:
        logger.info(
            f"W&B: the notebook's internet is on; save your W&B API key as the Kaggle secret {WANDB_SECRET} and attach "
            "it to the notebook (Add-ons -> Secrets) before it runs"
        )
    return summary


def push(bundle: dict[str, Any], api: Any = None) -> dict[str, Any]:
    """Create (or version) the toolkit dataset, then push the notebook; returns the kernel's ref and url."""
    import requests

    api = api or authenticated_api()
    toolkit, notebook = bundle["toolkit"], bundle["notebook"]
    ref = json.loads((Path(toolkit) / "dataset-metadata.json").read_text())["id"]
    with _quiet_client(), _mapped_errors(ref, "push", "dataset"):
        try:
            api.dataset_status(ref)
            exists = True
        except requests.exceptions.HTTPError as e:
            if e.response is None or e.response.status_code != 404:
                raise
            exists = False
        try:
            if exists:
                response = api.dataset_create_version(toolkit, "FaceNext wheel", quiet=True)
            else:
                response = api.dataset_create_new(toolkit, public=False, quiet=True)
        except ValueError as e:
            raise UserError(f"Kaggle refused the toolkit dataset {ref}: {e}") from None
    if getattr(response, "error", None):
        raise UserError(f"Kaggle refused the toolkit dataset {ref}: {response.error}")
    logger.info(f"dataset {ref}: {'new version' if exists else 'created'}")
    kernel = bundle["kernel"]
    with _quiet_client(), _mapped_errors(kernel, "push", "notebook"):
        try:
            saved = api.kernels_push(notebook)
        except ValueError as e:
            raise UserError(f"Kaggle refused the notebook {kernel}: {e}") from None
    if saved.error:
        raise UserError(f"Kaggle refused the notebook {kernel}: {saved.error}")
    logger.info(f"notebook {kernel} pushed (version {saved.version_number}): {saved.url}")
    logger.info(f"follow it with `facenext kernel-status {kernel}`, then `facenext kernel-output {kernel}`")
    return {"ref": saved.ref, "url": saved.url, "version": saved.version_number}


def _check_ref(kernel: str) -> None:
    if not KERNEL_REF.match(kernel):
        raise UserError(f"{kernel!r} is not a notebook name: use USER/SLUG, e.g. alice/facenext-demo")


def kernel_status(kernel: str) -> dict[str, Any]:
    """The notebook's latest run: status (queued, running, complete, error, ...) and any failure message."""
    _check_ref(kernel)
    api = authenticated_api()
    with _quiet_client(), _mapped_errors(kernel, "read the status of", "notebook"):
        try:
            response = api.kernels_status(kernel)
        except ValueError as e:
            raise UserError(f"Kaggle refused {kernel}: {str(e)[:200]}") from None
    status = getattr(response.status, "name", str(response.status)).lower()
    line = f"{kernel}: {status}"
    if response.failure_message:
        line += f" ({response.failure_message})"
    if status == "complete":
        line += f"; fetch the outputs with `facenext kernel-output {kernel}`"
    logger.info(line)
    return {"kernel": kernel, "status": status, "failure_message": response.failure_message or None}


def kernel_output(kernel: str, out: str | Path | None = None) -> list[Path]:
    """Download the notebook's output files (and its log) into ``out`` (default ``kernels/<slug>/output``)."""
    _check_ref(kernel)
    out = Path(out or Path("kernels") / kernel.split("/")[1] / "output")
    api = authenticated_api()
    with _quiet_client(), _mapped_errors(kernel, "fetch the outputs of", "notebook"):
        try:
            files, _ = api.kernels_output(kernel, str(out), force=True, quiet=True)
        except ValueError as e:
            raise UserError(f"Kaggle refused {kernel}: {str(e)[:200]}") from None
    paths = [Path(f) for f in files]
    logger.info(f"{kernel}: {len(paths)} file(s) in {out}: {', '.join(p.name for p in paths) or 'none'}")
    return paths


NOTEBOOK = '''\
"""FaceNext on Kaggle, written by `facenext kernel`: install offline, train, predict, verify, write and check the
term's submission file, print the grading description.

Attach the competition(s) and the toolkit dataset. The notebook needs no internet, unless it logs to Weights & Biases
(WANDB below): then turn the internet on and attach your W&B API key as the Kaggle secret named in SECRET.
"""

import os
import subprocess
import sys
from pathlib import Path

CONFIG = {config}
TERMS = {terms}  # the user's own terms file (data.terms_file), or None
OVERRIDES = {overrides}
COMPETITIONS = {competitions}
RUN = {run}
TOOLKIT = {toolkit}  # the dataset holding FaceNext's wheel
WANDB = {wandb}  # log the run to W&B, so that the grading description can name it
TAG = {tag}  # the grading back-end's tag (None: the term's)
SECRET = {secret}  # the Kaggle secret holding the W&B API key
KAGGLE = Path(os.environ.get("FACENEXT_KAGGLE_ROOT") or "/kaggle")  # set only by FaceNext's tests
INPUT, WORKING = KAGGLE / "input", KAGGLE / "working"
DATA = INPUT / COMPETITIONS[0] if len(COMPETITIONS) == 1 else INPUT  # the slug in the path names the term
os.environ.setdefault("KAGGLE_KERNEL_RUN_TYPE", "Batch")  # FaceNext then budgets for the 12-hour session
WORKING.mkdir(parents=True, exist_ok=True)
os.chdir(WORKING)

# 1. FaceNext from the attached dataset: no index, no dependencies (torch, timm, albumentations are preinstalled).
wheels = sorted((INPUT / TOOLKIT).rglob("facenext-*.whl"))
if not wheels:
    sys.exit(f"no FaceNext wheel under {{INPUT / TOOLKIT}}: attach the {{TOOLKIT}} dataset to this notebook")
target = KAGGLE / "temp" / "facenext"
install = ["install", "--no-index", "--no-deps", "--quiet", "--upgrade", "--target", str(target), str(wheels[-1])]
print("+ pip", " ".join(install), flush=True)
subprocess.run([sys.executable, "-m", "pip", *install], check=True)
sys.path.insert(0, str(target))

from facenext.cli import main  # noqa: E402
from facenext.config import load_config  # noqa: E402
from facenext.data.layout import find_layout  # noqa: E402
from facenext.errors import UserError  # noqa: E402
from facenext.grading import notebook_grading_lines  # noqa: E402
from facenext.submission import submission_format  # noqa: E402

print("using FaceNext from", Path(sys.modules["facenext.cli"].__file__).parent, flush=True)


def facenext(*args):
    print("+ facenext", " ".join(map(str, args)), flush=True)
    code = main([str(a) for a in args])
    if code:
        sys.exit(code)


def session_plan():
    """One training process per GPU (a T4 x2 session: two, under torchrun, the same global batch split between
    them) and the CPUs shared among their data workers: cpu_count // processes each, at least 1."""
    import torch

    gpus = int(os.environ.get("FACENEXT_KAGGLE_GPUS") or torch.cuda.device_count())  # the variable: tests only
    processes = max(gpus, 1)
    cpus = os.cpu_count() or 1
    return gpus, processes, cpus, max(1, cpus // processes)


def connect_wandb():
    """The W&B key from the notebook's Kaggle secret (or the environment), and wandb (the internet is on)."""
    if not os.environ.get(SECRET):
        try:
            from kaggle_secrets import UserSecretsClient

            os.environ[SECRET] = UserSecretsClient().get_secret(SECRET)
        except Exception as e:  # no secret attached, or not on Kaggle
            sys.exit(
                f"W&B logging needs your W&B API key as the Kaggle secret {{SECRET}} ({{type(e).__name__}}): in the "
                "notebook editor, Add-ons -> Secrets -> add it and attach it here, with the internet on; or rebuild "
                "the notebook without --wandb"
            )
    try:
        import wandb  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "wandb"], check=True)
    print(f"W&B: logging the run with the key from the secret {{SECRET}}", flush=True)


# 2. The competition and its submission format, before hours of training.
(WORKING / "config.yaml").write_text(CONFIG)
if TERMS is not None:  # the user's terms, here where the config's data.terms_file cannot reach
    (WORKING / "terms.yaml").write_text(TERMS)
    OVERRIDES = [*OVERRIDES, f"data.terms_file={{WORKING / 'terms.yaml'}}"]
try:
    config = load_config(WORKING / "config.yaml", OVERRIDES)
    layout = find_layout(DATA, config.data.term)
    # F26: the download's sample submission, else predict.submission_format; never a guess
    # No flag reaches a running notebook: the fix is a notebook rebuilt with another setting.
    source = f"predict.submission_format: {{config.predict.submission_format}} in this notebook's config"
    fix = "rebuild the notebook with `facenext kernel CONFIG predict.submission_format=sample` and push it again"
    fmt = (
        submission_format(layout, config.predict.submission_format, source, fix).name
        if layout.family.one_file
        else None
    )
except UserError as e:
    sys.exit(f"facenext: error: {{e}}")
print(f"competition: {{layout.term.title}} ({{layout.term.key}}) in {{layout.root}}", flush=True)
if WANDB:
    connect_wandb()

# 3. Train on every GPU.
run, predictions = WORKING / "runs" / RUN, WORKING / "submissions"
gpus, processes, cpus, workers = session_plan()
# The notebook's worker count goes first: data.num_workers in OVERRIDES (facenext kernel ... data.num_workers=N) wins.
train = ["train", WORKING / "config.yaml", "--out", run, f"data.root={{DATA}}", f"data.num_workers={{workers}}"]
train += OVERRIDES
print(
    f"session: {{gpus}} GPU(s), {{cpus}} CPUs: training in {{processes}} process(es)"
    f"{{' under torchrun' if processes > 1 else ''}}, {{workers}} data worker(s) each, train.batch_size split "
    "between the processes",
    flush=True,
)
if processes > 1:
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={{processes}}"]
    command = [*launch, "-m", "facenext", *map(str, train)]
    print("+", " ".join(command), flush=True)
    paths = [str(target), *filter(None, [os.environ.get("PYTHONPATH")])]
    code = subprocess.run(command, env={{**os.environ, "PYTHONPATH": os.pathsep.join(paths)}}).returncode
    if code:
        sys.exit(code)
else:
    facenext(*train)

# 4. Test predictions, verification (pair scores or identity matches), then the file the competition scores.
out = predictions / RUN
if layout.dev is not None:  # dev logits: the ensemble step reports dev accuracy (F26: the combined dev score)
    facenext("predict", run, "--split", "dev", "--out", out)
if layout.test is not None:
    facenext("predict", run, "--out", out)
if layout.known is not None or layout.val_pairs is not None:
    facenext("verify", run, "--out", out)
else:
    print("no verification data attached: verification skipped")
submission = WORKING / "submission.csv"
facenext("ensemble", run, "--predictions", predictions, "--out", submission, *(["--format", fmt] if fmt else []))
facenext("check-submission", submission, "--data", DATA, "--term", layout.term.key)
print("done:", submission, flush=True)
if (out / "verification_submission.csv").is_file():
    print("verification submission:", out / "verification_submission.csv")

# 5. The grading description: the Kaggle submission's description must be exactly this.
for line in notebook_grading_lines(run, layout.term, TAG, WANDB):
    print(line)
'''
