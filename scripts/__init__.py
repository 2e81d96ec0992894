"""The ``hqrs`` command line (``hqrs.scripts``).

Every sub-command lives in its own module that defines ``register(subparsers, parents)``;
:mod:`hqrs.scripts.cli` lists them. Modules stay import-light (heavy libraries are imported
inside the command functions) so that ``hqrs --help`` answers at once.
"""
