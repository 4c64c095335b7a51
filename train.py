"""Train a model: python train.py [group=choice ...] [key=value ...] (see conf/train.yaml)."""

# Imported under __main__: the worker processes that prepare data import this file again
# (multiprocessing's spawn) and need none of it.
if __name__ == "__main__":
    from nmt.cli import train_main

    train_main()
