"""Caption images: python caption.py checkpoint=caption.ckpt images=DIR output=captions.tsv."""

# Imported under __main__: the worker processes that prepare data import this file again
# (multiprocessing's spawn) and need none of it.
if __name__ == "__main__":
    from nmt.cli import caption_main

    caption_main()
