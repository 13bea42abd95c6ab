"""python -m apps.speech VERB [OVERRIDES...]: train, eval, predict, separate, aggregate (see --help)."""
from pathlib import Path

from apps.common.cli import main
from apps.common.run import App
from apps.speech.separate import separate
from apps.speech.task import build_task, write_predictions

APP = App(
    name="speech",
    config_dir=Path(__file__).parent / "conf",
    build_task=build_task,
    write_predictions=write_predictions,
    verbs={"separate": separate},
    checkpoint_verbs=("separate",),
)

if __name__ == "__main__":
    main(APP)
