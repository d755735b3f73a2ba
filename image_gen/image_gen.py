"""Train and sample the image models (a class-conditional DDPM, or a GAN beside it): `python image_gen.py --help`.

The command line lives in imagegen/cli.py; `pip install -e .` also installs it as the `image-gen` command.
"""
from imagegen.cli import main

if __name__ == "__main__":
    main()
