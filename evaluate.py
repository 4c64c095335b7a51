"""Score checkpoints: python evaluate.py checkpoint=model.ckpt [data=...] [split=...]."""

# Imported under __main__: the worker processes that prepare data import this file again
# (multiprocessing's spawn) and need none of it.
if __name__ == "__main__":
    from nmt.cli import evaluate_main

    evaluate_main()
