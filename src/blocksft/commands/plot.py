"""`blocksft plot RUN [RUN ...] --output loss.png`: loss curves of several runs in one PNG."""


def add_arguments(parser) -> None:
    from blocksft.config import add_dataclass_arguments
    from blocksft.train.plot import PlotConfig

    parser.add_argument(
        "runs", nargs="+", help="<ckpt_dir>_logs folders, checkpoint roots or train_loss.csv files"
    )
    add_dataclass_arguments(parser, PlotConfig)


def run(args) -> int:
    from blocksft.config import build_config
    from blocksft.train.plot import PlotConfig, plot_runs

    output = plot_runs(args.runs, build_config(PlotConfig, args))
    print(f"wrote {output}")
    return 0
