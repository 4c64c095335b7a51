"""Average checkpoints: python average.py run_dir=RUN last=5 output=avg.ckpt."""

# Imported under __main__: the worker processes that prepare data import this file again
# (multiprocessing's spawn) and need none of it.
if __name__ == "__main__":
    from nmt.cli import average_main

    average_main()
