"""lm-evaluation-harness's command line with blocksft's model class registered as ``blocksft``.

    python -m blocksft.evaluate.harness run --model blocksft \\
        --model_args pretrained=CKPT,gen_length=256,block_length=32,steps=256 --tasks gsm8k

Every flag is the harness's own (``lm-eval run --help``); see :mod:`blocksft.evaluate.lm_eval_model`
for the model arguments.
"""


def main() -> None:
    # lm-eval is an optional extra: it (and our model class, which needs it) load only when run.
    from lm_eval.__main__ import cli_evaluate

    import blocksft.evaluate.lm_eval_model  # noqa: F401 - registers "blocksft"

    cli_evaluate()


if __name__ == "__main__":
    main()
