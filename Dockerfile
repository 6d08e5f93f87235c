# wo-stream worker / bridge image: the project installed from a wheel, run as a non-root user.
FROM python:3.11-slim AS build

WORKDIR /src
# Build a wheel of the project and its dependencies in a throwaway stage so the runtime image
# carries no compilers, caches or sources.
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY tables ./tables
COPY connectors ./connectors
COPY events ./events
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    WO_DATA_DIR=/var/lib/wo-stream

COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links=/wheels wo-stream \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --home-dir /var/lib/wo-stream --create-home wo

USER wo
WORKDIR /var/lib/wo-stream
# Table state (RocksDB) lives here; mount a volume so restarts do not rebuild from changelogs.
VOLUME ["/var/lib/wo-stream"]

# 6066: Faust web server (/metrics and views).
EXPOSE 6066

ENTRYPOINT ["wo-stream"]
CMD ["--help"]
