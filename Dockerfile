# trapkit serving image: batch classifier (photos and video), Triton client, Gradio demo, Hub publishing.
# Installs the checked-out source (not a registry copy) without the training stack.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    GRADIO_SERVER_NAME=0.0.0.0

RUN useradd --create-home --uid 1000 trapkit

WORKDIR /opt/trapkit
COPY pyproject.toml README.md ./
COPY trapkit ./trapkit
COPY train ./train
COPY export ./export
COPY serve ./serve
# gcc and libjpeg's headers build trapkit's region decoder and crop resampler, then go; the libjpeg runtime stays.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libjpeg62-turbo gcc libc6-dev libjpeg62-turbo-dev \
    && pip install ".[serve,video,triton,demo,hub]" \
    && apt-get purge -y --auto-remove gcc libc6-dev libjpeg62-turbo-dev \
    && rm -rf /var/lib/apt/lists/*

USER trapkit
WORKDIR /home/trapkit
EXPOSE 7860
ENTRYPOINT ["trapkit"]
CMD ["--help"]
