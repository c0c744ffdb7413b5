"""The gallery: a local web page to look at a run's clusters, name them and draw samples.

Standard library only (:mod:`http.server`) plus the package's own sampler; it reads one run folder
and writes nothing there except cluster names, through :func:`clusterguide.run.set_name`.
Start it with ``clusterguide serve RUN_DIR`` or :func:`make_server`.
"""

from clusterguide.web.server import Gallery, GalleryServer, make_server

__all__ = ["Gallery", "GalleryServer", "make_server"]
