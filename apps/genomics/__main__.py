"""python -m apps.genomics VERB [OVERRIDES...]: train, eval, predict, finetune, embed, aggregate (see --help)."""
from pathlib import Path

from apps.common.cli import main
from apps.common.run import App
from apps.genomics.task import build_task, write_predictions
from apps.genomics.verbs import embed, finetune

APP = App(
    name="genomics",
    config_dir=Path(__file__).parent / "conf",
    build_task=build_task,
    write_predictions=write_predictions,
    verbs={"finetune": finetune, "embed": embed},
    checkpoint_verbs=("finetune", "embed"),
    replay={"finetune": ("model",)},
)

if __name__ == "__main__":
    main(APP)
