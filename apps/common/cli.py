"""The command line of every app: `python -m apps.<app> VERB [OVERRIDES...]`.

train, eval, predict and an app's own verbs (`App.verbs`) run through Hydra (overrides, -m sweeps, --help,
Hydra's own error messages for typos); aggregate is `apps.common.results.main`. Before Hydra starts:
- every mixer of `core.available_mixers()` becomes an option of the config group model/mixer, so new
  mixers need no YAML (a YAML file of the same name in an app's conf/model/mixer/ is a preset and wins);
- a `ckpt_path=` argument is resolved to a file (a run directory, "last"/"best" of the newest run of
  that name) and the overrides stored in that checkpoint are put before the given ones, so a checkpoint
  is evaluated, used or resumed with the model and data it was trained with.
"""
from __future__ import annotations

import contextlib
import difflib
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra import compose, initialize_config_dir
from hydra._internal.utils import get_args_parser
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

import core
from apps.common import results
from apps.common.run import App
from apps.common.trainer import checkpoint_overrides, find_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMON_CONF = Path(__file__).resolve().parent / "conf"
CHECKPOINT_VERBS = ("eval", "predict")  # verbs that need ckpt_path=
# overrides for a run whose output goes to a log file (benchmarks, tests): no progress bar, whose redraws fill the
# log, and no model summary
QUIET = ["~callbacks.progress_bar", "+trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def register_mixers(config_dir: Path) -> None:
    """Store {name, options: {}} as option `name` of the config group model/mixer, for every core mixer
    without a YAML preset in config_dir/model/mixer/ (Hydra would merge the two)."""
    store = ConfigStore.instance()
    presets = {path.stem for path in (config_dir / "model" / "mixer").glob("*.yaml")}
    for name in sorted(set(core.available_mixers()) - presets):
        store.store(group="model/mixer", name=name, node={"name": name, "options": {}}, provider="core")


def register_resolvers() -> None:
    """${repo_root:}: the repository's root directory (for paths beside it, e.g. ../shared/data)."""
    OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT), replace=True)


def override_key(override: str) -> str:
    """The config key or group an override sets ("model/mixer" for "model/mixer=gla")."""
    return OverridesParser.create().parse_override(override).key_or_group


def merge_overrides(stored: Sequence[str], given: Sequence[str]) -> list[str]:
    """`stored` then `given`, dropping stored ones whose key is given again (and stored ckpt_path)."""
    given_keys = {override_key(item) for item in given}
    kept = [item for item in stored if override_key(item) not in given_keys | {"ckpt_path"}]
    return kept + list(given)


def resolve_checkpoint(app: App, verb: str, overrides: list[str]) -> list[str]:
    """Overrides with ckpt_path=<file> and, before them, the overrides stored in that checkpoint."""
    given = [item for item in overrides if override_key(item) != "ckpt_path"]
    values = [item.split("=", 1)[1] for item in overrides if override_key(item) == "ckpt_path"]
    if not values or values[-1] in ("null", ""):
        if verb in CHECKPOINT_VERBS or verb in app.checkpoint_verbs:
            raise SystemExit(
                f"error: {verb} needs a checkpoint: ckpt_path=RUN_DIR, a .ckpt file, or best/last (newest run of that name)"
            )
        return overrides
    search_dir = Path()
    if values[-1] in ("last", "best"):  # search the runs of this app and run name
        with initialize_config_dir(config_dir=str(app.config_dir), version_base="1.3"):
            cfg = compose("config", overrides=given)
        search_dir = Path(cfg.paths.runs) / cfg.app / cfg.name
    path = find_checkpoint(values[-1], search_dir, "last.ckpt" if verb == "train" else "best.ckpt")
    stored = checkpoint_overrides(path)
    if verb in app.replay:
        stored = [item for item in stored if re.split(r"[./]", override_key(item))[0] in app.replay[verb]]
    return merge_overrides(stored, [*given, f"ckpt_path={path}"])


@contextlib.contextmanager
def command_line(argv: list[str]) -> Iterator[None]:
    """sys.argv = argv inside the block."""
    saved, sys.argv = sys.argv, argv
    try:
        yield
    finally:
        sys.argv = saved


def run_hydra(app: App, verb: str, argv: list[str]) -> Any:
    """Run the app's verb under hydra.main with `argv` as its command line; returns the (last) job's result."""
    returned: list[Any] = []
    # Lightning's DDP launcher starts its other processes by re-running sys.argv: give it the verb's command line.
    rerun = [sys.argv[0], verb, *argv]

    def task_function(cfg: Any) -> None:
        with command_line(rerun):
            returned.append(app.all_verbs()[verb](cfg, app))

    main_function = hydra.main(version_base="1.3", config_path=str(app.config_dir), config_name="config")(task_function)
    # config.yaml's hydra.searchpath already finds COMMON_CONF; --config-dir adds it to the initial search
    # path as well, which is the only one Hydra's --help lists groups from.
    hydra_argv = [f"python -m apps.{app.name} {verb}", f"--config-dir={COMMON_CONF}", *argv, f"hydra.job.name={verb}"]
    with command_line(hydra_argv):
        main_function()
    return returned[-1] if returned else None


def main(app: App, argv: Sequence[str] | None = None) -> Any:
    """Entry point of `python -m apps.<app>`; `argv` defaults to sys.argv[1:]. Returns the verb's result."""
    argv = list(sys.argv[1:] if argv is None else argv)
    register_mixers(app.config_dir)
    register_resolvers()
    if not argv or argv[0] in ("-h", "--help"):
        return run_hydra(app, "train", ["--help"])
    verb, rest = argv[0], argv[1:]
    if verb == "aggregate":
        return results.main(rest)
    verbs = [*app.all_verbs(), "aggregate"]
    if verb not in verbs:
        close = difflib.get_close_matches(verb, verbs, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise SystemExit(f"error: unknown verb {verb!r}.{hint} Verbs: {', '.join(verbs)}; see --help")
    overrides = get_args_parser().parse_args(rest).overrides
    flags = [item for item in rest if item not in overrides]
    try:
        overrides = resolve_checkpoint(app, verb, overrides)
    except (HydraException, OmegaConfBaseException, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None
    return run_hydra(app, verb, flags + overrides)
