#!/bin/sh
# minio-init: buckets and scoped users, idempotently. The root credentials come in
# MC_HOST_s3 (environment); the policies are rendered from the bucket names.
set -eu
until mc ready s3 >/dev/null 2>&1; do sleep 1; done
mc mb --ignore-existing "s3/$ARTIFACT_BUCKET" "s3/$MLFLOW_BUCKET" "s3/$DVC_BUCKET"

umask 077
cat > /tmp/fl-writer.json <<JSON
{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:*"],
  "Resource": ["arn:aws:s3:::$ARTIFACT_BUCKET", "arn:aws:s3:::$ARTIFACT_BUCKET/*",
               "arn:aws:s3:::$MLFLOW_BUCKET", "arn:aws:s3:::$MLFLOW_BUCKET/*",
               "arn:aws:s3:::$DVC_BUCKET", "arn:aws:s3:::$DVC_BUCKET/*"]}]}
JSON
cat > /tmp/fl-reader.json <<JSON
{"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
  "Action": ["s3:GetObject", "s3:ListBucket", "s3:GetBucketLocation"],
  "Resource": ["arn:aws:s3:::$MLFLOW_BUCKET", "arn:aws:s3:::$MLFLOW_BUCKET/*"]}]}
JSON
mc admin policy create s3 fl-writer /tmp/fl-writer.json
mc admin policy create s3 fl-reader /tmp/fl-reader.json
# mc takes the user's secret as an argument: it is visible only inside this short-lived
# container's own process namespace while mc runs.
mc admin user add s3 "$S3_WRITER_KEY" "$S3_WRITER_SECRET"
mc admin user add s3 "$S3_READER_KEY" "$S3_READER_SECRET"
mc admin policy attach s3 fl-writer --user "$S3_WRITER_KEY" || true
mc admin policy attach s3 fl-reader --user "$S3_READER_KEY" || true
echo "buckets and users ready"
