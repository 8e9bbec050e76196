"""Subcommands that use a trained model: evaluate, export, predict, features, tensorboard (registered by hpcvision.cli)."""

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands to the top-level parser."""
