# Flowerbed dashboard image: `docker run -p 5555:5555 -e FLOWERBED_AUTH_TOKEN=… -e FLOWERBED_REDIS_URL=redis://redis:6379/0 flowerbed`
# Workers do not need this image: they `pip install flowerbed` (collectors only depend on redis-py).

FROM python:3.11-slim AS build
WORKDIR /src
RUN pip install --no-cache-dir build
COPY pyproject.toml README.md LICENSE ./
COPY collectors ./collectors
COPY dashboard ./dashboard
COPY templates ./templates
COPY static ./static
RUN python -m build --wheel --outdir /dist

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 flowerbed
COPY --from=build /dist/*.whl /tmp/
RUN pip install --no-cache-dir "$(ls /tmp/flowerbed-*.whl)[dashboard]" && rm /tmp/*.whl
RUN mkdir -p /home/flowerbed/data && chown flowerbed:flowerbed /home/flowerbed/data
USER flowerbed
WORKDIR /home/flowerbed
VOLUME ["/home/flowerbed/data"]
ENV FLOWERBED_HOST=0.0.0.0 \
    FLOWERBED_PORT=5555 \
    FLOWERBED_DATABASE_URL=sqlite:////home/flowerbed/data/flowerbed.db \
    PYTHONUNBUFFERED=1
EXPOSE 5555
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:5555/healthz', timeout=4).status == 200 else 1)"
# Listening on 0.0.0.0 is refused unless FLOWERBED_AUTH_TOKEN is set: pass one with -e.
CMD ["flowerbed", "serve"]
