"""Translate files: python translate.py checkpoint=model.ckpt input=in.txt output=out.txt."""

# Imported under __main__: the worker processes that prepare data import this file again
# (multiprocessing's spawn) and need none of it.
if __name__ == "__main__":
    from nmt.cli import translate_main

    translate_main()
