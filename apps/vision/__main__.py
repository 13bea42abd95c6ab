"""python -m apps.vision VERB [OVERRIDES...]: train, eval, predict, aggregate (see --help)."""
from pathlib import Path

from apps.common.cli import main
from apps.common.run import App
from apps.vision.task import build_task, write_predictions

APP = App(name="vision", config_dir=Path(__file__).parent / "conf", build_task=build_task, write_predictions=write_predictions)

if __name__ == "__main__":
    main(APP)
