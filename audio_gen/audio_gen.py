"""Train and use the mel autoencoder / VAE, its learned prior and its vocoder: `python audio_gen.py --help`.

The command line lives in audiogen/cli.py; `pip install -e .` also installs it as the `audio-gen` command.
"""
from audiogen.cli import main

if __name__ == "__main__":
    main()
