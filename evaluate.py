"""Score checkpoints: python evaluate.py checkpoint=model.ckpt [data=...] [split=...]."""

from nmt.cli import evaluate_main

if __name__ == "__main__":
    evaluate_main()
