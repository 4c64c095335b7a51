"""Train a model: python train.py [group=choice ...] [key=value ...] (see conf/train.yaml)."""

from nmt.cli import train_main

if __name__ == "__main__":
    train_main()
