"""python -m apps.rl VERB [OVERRIDES...]: train, eval, predict, rollout, collect, aggregate (see --help)."""
from pathlib import Path

from apps.common.cli import main
from apps.common.run import App
from apps.rl.collect import collect
from apps.rl.evaluate import rollout
from apps.rl.task import build_task, write_predictions

APP = App(
    name="rl",
    config_dir=Path(__file__).parent / "conf",
    build_task=build_task,
    write_predictions=write_predictions,
    verbs={"collect": collect, "rollout": rollout},
    checkpoint_verbs=("rollout",),
)

if __name__ == "__main__":
    main(APP)
