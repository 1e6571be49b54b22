# The ccpulse worker/simulator image used by docker-compose.yml.
FROM python:3.11.11-slim-bookworm
WORKDIR /app
COPY pyproject.toml README.md ./
COPY ccpulse ccpulse
COPY streams streams
COPY sinks sinks
COPY schemas schemas
COPY deploy/scenarios.toml deploy/scenarios.toml
RUN pip install --no-cache-dir .
ENTRYPOINT ["ccpulse"]
CMD ["worker"]
