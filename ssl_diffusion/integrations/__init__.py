"""Optional bridges to other SSL frameworks, each behind its own extra; nothing in the package
imports them.

* ``solo`` (extra ``[solo]``, plus solo-learn installed from its repository): registers ``ddae``
  and ``ddaepp`` as solo-learn methods and backbones (``solo.py``, needs solo-learn); the backbone
  that holds this project's method (``solo_backbone.py``) and the converter from a solo-learn
  checkpoint to this project's format (``solo_convert.py``) need only torch.
"""
