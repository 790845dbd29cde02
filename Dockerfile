# tenantflow: the API (`serve`) and the workers (`worker`) in one image; compose.yaml runs them
# on PostgreSQL. The workflows come from an app module (TENANTFLOW_APP, e.g.
# tenantflow.examples.loan_platform.service:setup, which ships with the package): build your own
# image FROM this one with your module installed, or mount it and set PYTHONPATH.
FROM python:3.11-slim AS build
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 tenantflow
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir "$(ls /wheels/tenantflow-*.whl)[server,postgres]" \
    && rm -rf /wheels
USER tenantflow
WORKDIR /home/tenantflow
EXPOSE 8000 9101
ENTRYPOINT ["tenantflow"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
