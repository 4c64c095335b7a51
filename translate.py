"""Translate files: python translate.py checkpoint=model.ckpt input=in.txt output=out.txt."""

from nmt.cli import translate_main

if __name__ == "__main__":
    translate_main()
