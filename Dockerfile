FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY sopbot sopbot
COPY scheduler scheduler
COPY channels channels
COPY audiences audiences
COPY sop_templates sop_templates
COPY api api
COPY migrations migrations
COPY alembic.ini ./
RUN pip install '.[postgres]' && useradd --create-home sopbot && mkdir -p /data && chown sopbot /data
USER sopbot
ENV SOPBOT_DATABASE_URL=sqlite:////data/sopbot.db SOPBOT_HOST=0.0.0.0 SOPBOT_PORT=8000
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --retries=3 \
  CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)" || exit 1
# --migrate: a single-process install upgrades its own SQLite schema on start.
CMD ["sopbot", "serve", "--migrate"]
