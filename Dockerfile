# Parley: the engine as a container. Redis runs beside it (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

# Dependencies first, so this layer is cached until pyproject.toml changes.
COPY pyproject.toml README.md ./
RUN mkdir engine gateways && touch engine/__init__.py gateways/__init__.py \
 && pip install . && pip uninstall -y parley && rm -rf engine gateways

COPY engine/ engine/
COPY gateways/ gateways/
COPY rules/ rules/
# The commit this image is built from, shown by the parley_build_info metric:
#   docker build --build-arg PARLEY_COMMIT=$(git rev-parse --short HEAD) .
ARG PARLEY_COMMIT=unknown
RUN printf '%s\n' "$PARLEY_COMMIT" > engine/core/BUILD_COMMIT \
 && pip install --no-deps . \
 && useradd --system --uid 10001 --home-dir /app parley
USER parley

# Listen on all interfaces inside the container; set PARLEY_REDIS_URL (the compose file does).
ENV PARLEY_HTTP_HOST=0.0.0.0 PARLEY_HTTP_PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz').status != 200)"
ENTRYPOINT ["parley"]
CMD ["run"]
