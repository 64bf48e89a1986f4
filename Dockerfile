# fpcancel: the worker, the CLI, the HTTP service and the sandbox in one slim image.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 10001 fpcancel
WORKDIR /app

COPY pyproject.toml README.md ./
COPY worker ./worker
COPY models ./models
COPY migrations ./migrations
RUN pip install . && fpcancel --help >/dev/null

USER fpcancel
WORKDIR /home/fpcancel
ENTRYPOINT ["fpcancel"]
CMD ["worker"]
