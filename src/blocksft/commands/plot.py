"""`blocksft plot RUN [RUN ...] --output loss.png`: loss curves of several runs in one PNG."""

from blocksft.config.flags import add_dataclass_arguments, build_config
from blocksft.config.plot import PlotConfig


def add_arguments(parser) -> None:
    parser.add_argument(
        "runs", nargs="+", help="<ckpt_dir>_logs folders, checkpoint roots or train_loss.csv files"
    )
    add_dataclass_arguments(parser, PlotConfig)


def run(args) -> int:
    config = build_config(PlotConfig, args)
    from blocksft.train.plot import plot_runs  # matplotlib loads only now

    print(f"wrote {plot_runs(args.runs, config)}")
    return 0
