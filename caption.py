"""Caption images: python caption.py checkpoint=caption.ckpt images=DIR output=captions.tsv."""

from nmt.cli import caption_main

if __name__ == "__main__":
    caption_main()
