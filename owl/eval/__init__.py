"""Evaluation: a model's answers on public sets in their published formats, scored the official way.

``owl eval owleval|vqa|mme|mmbench|world`` (:mod:`owl.eval.cli`). The model-backed runs share one runner
(:mod:`owl.eval.runner`: batched, resumable, a manifest per run, :mod:`owl.eval.manifest`); each benchmark module
reads its files, builds the prompts and scores the answers (:mod:`owl.eval.owleval`, :mod:`owl.eval.vqa`,
:mod:`owl.eval.mme`, :mod:`owl.eval.mmbench`, :mod:`owl.eval.world`); :mod:`owl.eval.bootstrap` gives the 95%
intervals. Scorers also take a predictions file without a model (``--predictions``).
"""
