"""Maintainer and CI tooling, outside the runtime package lab2: the Colab package list and its refresh,
the Colab rehearsal, the README's screenshot, the shipped sample-data generator. Run from the
repository root (`python -m tools.<module>`); nothing in lab2 imports them."""
