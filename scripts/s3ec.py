"""Put or get one object through AWS's S3 Encryption Client for Python, with a
KMS key: the client s3vol's encrypted objects must agree with.

    python s3ec.py S3_ENDPOINT KMS_ENDPOINT KMS_KEY_ID put BUCKET KEY v3|v2 [NAME=VALUE...] < plaintext
    python s3ec.py S3_ENDPOINT KMS_ENDPOINT KMS_KEY_ID get BUCKET KEY [NAME=VALUE...] > plaintext

put encrypts in the current format (v3, key commitment) or the older one (v2);
get reads either (and fails, exit 1, on a tag or commitment that does not match).
NAME=VALUE pairs are the encryption context, which a get must give exactly as the
put did.
Credentials and region come from the environment. Run it with the Python of the
venv scripts/lib.sh makes (ensure_s3_encryption_client).
"""

import os
import sys

import boto3
import botocore.config
from s3_encryption import S3EncryptionClient, S3EncryptionClientConfig
from s3_encryption.materials.kms_keyring import KmsKeyring
from s3_encryption.materials.materials import AlgorithmSuite, CommitmentPolicy


def client(s3_endpoint, kms_endpoint, key_id, version):
    region = os.environ.get("AWS_REGION", "us-east-1")
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name=region,
        config=botocore.config.Config(s3={"addressing_style": "path"}),
    )
    kms = boto3.client("kms", endpoint_url=kms_endpoint, region_name=region)
    if version == "v2":
        config = S3EncryptionClientConfig(
            keyring=KmsKeyring(kms_client=kms, kms_key_id=key_id),
            encryption_algorithm=AlgorithmSuite.ALG_AES_256_GCM_IV12_TAG16_NO_KDF,
            commitment_policy=CommitmentPolicy.FORBID_ENCRYPT_ALLOW_DECRYPT,
        )
    else:
        config = S3EncryptionClientConfig(
            keyring=KmsKeyring(kms_client=kms, kms_key_id=key_id),
            commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_ALLOW_DECRYPT,
        )
    return S3EncryptionClient(wrapped_s3_client=s3, config=config)


def main():
    s3_endpoint, kms_endpoint, key_id, action, bucket, key = sys.argv[1:7]
    if action == "put":
        version, pairs = sys.argv[7], sys.argv[8:]
    else:
        version, pairs = "v3", sys.argv[7:]
    context = dict(pair.split("=", 1) for pair in pairs)
    s3ec = client(s3_endpoint, kms_endpoint, key_id, version)
    if action == "put":
        body = sys.stdin.buffer.read()
        s3ec.put_object(Bucket=bucket, Key=key, Body=body, EncryptionContext=context)
    elif action == "get":
        answer = s3ec.get_object(Bucket=bucket, Key=key, EncryptionContext=context)
        sys.stdout.buffer.write(answer["Body"].read())
    else:
        sys.exit(f"unknown action {action}")


if __name__ == "__main__":
    main()
