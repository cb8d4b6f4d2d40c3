"""Synthetic screening studies with ground truth: mammography exams and LDCT series (`oncostream synth`)."""

from oncostream.synth.command import study_seed, write_studies
from oncostream.synth.ldct import LdctPhantom, ldct_datasets, make_ldct_phantom
from oncostream.synth.mammo import MammoPhantom, make_mammo_phantom, mammo_datasets

__all__ = ["LdctPhantom", "MammoPhantom", "ldct_datasets", "make_ldct_phantom", "make_mammo_phantom",
           "mammo_datasets", "study_seed", "write_studies"]
