"""The contracts every other package builds on, with no dependency above them.

=====================  ==============================================================
``core.params``        :class:`ParamSpec` / :class:`FlatModel`: a model as one flat vector
``core.messages``      :class:`Broadcast` / :class:`Update` and their byte counts
``core.strategy``      :class:`Strategy`, :class:`ServerState`, :class:`ServerContext`, ``Clock``
``core.client``        :class:`ClientAlgorithm`, :class:`ClientJob`, :class:`JobResult`
``core.observer``      :class:`Observer`
``core.task``          :class:`Task`: loss, per-example figures, metrics
``core.state_store``   the client-state store (per-client tensors, spilled to disk)
``core.rng``           ``derive_seed`` and the generators keyed by it
``core.errors``        the typed errors (``ConfigError``, ``DataError``...)
=====================  ==============================================================

Import from the submodules. This package imports nothing itself, so that the local
trainer (``fedweave.train``, which the client contract uses) can import
``core.params`` without pulling in ``core.client``.
"""
