"""The process's open-file limit, raised at start-up so that ``MAX_CONNECTIONS`` (REST and gRPC
each), not the descriptors, is what bounds connections."""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)

# Descriptors a process needs beside its client connections: models, repository scans, log
# files, the event loop, gRPC's listener and threads.
FD_HEADROOM = 1024


def raise_open_file_limit(max_connections: int) -> int:
    """Raise the soft open-file limit to the hard one (as Go's runtime does), so that
    ``max_connections`` (REST and gRPC each) plus ``FD_HEADROOM`` fit; returns the soft limit in
    force. Warns when the hard limit is too low for that, since the descriptors then bound
    connections before the cap does."""
    needed = 2 * max_connections + FD_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(soft, needed) if hard == resource.RLIM_INFINITY else hard
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
            target = soft
        else:
            log.info("open-file limit raised from %d to %d", soft, target)
    else:
        target = soft
    if target < needed:
        log.warning(
            "the open-file limit (%d) is below what MAX_CONNECTIONS=%d needs (%d): the limit, "
            "not the cap, will refuse connections",
            target,
            max_connections,
            needed,
        )
    return target
