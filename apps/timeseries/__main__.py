"""python -m apps.timeseries VERB [OVERRIDES...]: train, eval, predict, aggregate (see --help)."""
from pathlib import Path

from apps.common.cli import main
from apps.common.run import App
from apps.timeseries.task import build_task, write_predictions

APP = App(name="timeseries", config_dir=Path(__file__).parent / "conf", build_task=build_task, write_predictions=write_predictions)

if __name__ == "__main__":
    main(APP)
