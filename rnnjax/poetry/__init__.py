"""The Tang-poetry app built on the rnnjax layers: data, model, training, generation, evaluation.

Commands (``python -m rnnjax.poetry <command> --help``)::

    data       fetch, clean and encode the corpus into data/tang.npz
    evaluate   validation perplexity and generation quality of a checkpoint
    export     ship a trained checkpoint (half precision when quality holds)
    meter      how many poems of a corpus keep 格律 and rhyme in 平水韵

``train.py`` and ``generate.py`` at the repository root are the two everyday commands. Nothing here
is imported by :mod:`rnnjax` itself: the app depends on the library, never the reverse.
"""
