"""Set up a moto server the way a customer sets up a bucket for s3vol, then switch
authentication on.

    python moto_roles.py ENDPOINT

Creates bucket "vol" with objects under "root/" and one outside it; an IAM user
"platform" (the identity s3vol runs as) allowed to assume role "reader"; the role,
whose trust policy names that user and requires an external ID, and whose policy
allows only listing the bucket and reading "vol/root/*"; a role "writer" with the
same trust that may write "vol/scratch/*" and use KMS (key "volumes", for
client-side encryption); and a second customer's role "tenant-b",
which requires an external ID of its own and may read and write "vol/tenant-b/*"
only. Then turns on moto's authentication and IAM enforcement and prints the
details as JSON.

Run it with the Python of the moto virtualenv (it has boto3).
"""

import json
import sys
import urllib.request

import boto3

endpoint = sys.argv[1]
session = boto3.session.Session(
    aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap", region_name="us-east-1"
)
s3 = session.client("s3", endpoint_url=endpoint)
iam = session.client("iam", endpoint_url=endpoint)
kms = session.client("kms", endpoint_url=endpoint)

EXTERNAL_ID = "s3vol-test-external-id-7f3a"
TENANT_B_EXTERNAL_ID = "s3vol-test-tenant-b-id-41c9"

s3.create_bucket(Bucket="vol")
s3.put_object(Bucket="vol", Key="root/a.txt", Body=b"inside the volume\n")
s3.put_object(Bucket="vol", Key="root/data/b.bin", Body=bytes(range(256)) * 4096)
s3.put_object(Bucket="vol", Key="aaa-outside.txt", Body=b"outside the volume\n")
s3.put_object(Bucket="vol", Key="tenant-b/hello.txt", Body=b"tenant b\n")

kms_key = kms.create_key(Description="volumes")["KeyMetadata"]["Arn"]

user = iam.create_user(UserName="platform")["User"]
key = iam.create_access_key(UserName="platform")["AccessKey"]


def trust_with(external_id):
    return json.dumps({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"AWS": user["Arn"]},
            "Action": "sts:AssumeRole",
            "Condition": {"StringEquals": {"sts:ExternalId": external_id}},
        }],
    })


def read_write(prefix, listing_condition=None, extra=()):
    """A policy that may list the bucket and read and write under `prefix`."""
    listing = {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:ListBucketMultipartUploads"],
               "Resource": "arn:aws:s3:::vol"}
    if listing_condition:
        listing["Condition"] = listing_condition
    objects = {"Effect": "Allow",
               "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject",
                          "s3:AbortMultipartUpload"],
               "Resource": f"arn:aws:s3:::vol/{prefix}*"}
    return json.dumps({"Version": "2012-10-17", "Statement": [listing, objects, *extra]})


trust = trust_with(EXTERNAL_ID)
role = iam.create_role(
    RoleName="reader", AssumeRolePolicyDocument=trust, MaxSessionDuration=43200
)["Role"]
# A second role that may write under scratch/, for read-write volumes.
writer = iam.create_role(
    RoleName="writer", AssumeRolePolicyDocument=trust, MaxSessionDuration=43200
)["Role"]
iam.put_role_policy(
    RoleName="writer",
    PolicyName="write-scratch",
    PolicyDocument=read_write("scratch/", extra=[
        # moto checks KMS actions against the resource "*", not the key's ARN
        # (AWS checks the key): a grant on the key alone would match nothing.
        {"Effect": "Allow", "Action": ["kms:GenerateDataKey", "kms:Decrypt"],
         "Resource": "*"},
    ]),
)

tenant_b = iam.create_role(
    RoleName="tenant-b", AssumeRolePolicyDocument=trust_with(TENANT_B_EXTERNAL_ID),
    MaxSessionDuration=43200,
)["Role"]
iam.put_role_policy(
    RoleName="tenant-b",
    PolicyName="tenant-b-prefix",
    PolicyDocument=read_write(
        "tenant-b/", {"StringLike": {"s3:prefix": ["tenant-b/", "tenant-b/*"]}}
    ),
)
iam.put_user_policy(
    UserName="platform",
    PolicyName="assume-reader",
    PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                       "Resource": [role["Arn"], writer["Arn"], tenant_b["Arn"]]}],
    }),
)
iam.put_role_policy(
    RoleName="reader",
    PolicyName="read-root",
    PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::vol",
             "Condition": {"StringLike": {"s3:prefix": ["root/", "root/*"]}}},
            {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::vol/root/*"},
        ],
    }),
)

request = urllib.request.Request(
    endpoint + "/moto-api/reset-auth",
    data=b"0",
    headers={"Content-Type": "application/octet-stream"},
    method="POST",
)
urllib.request.urlopen(request).read()

print(json.dumps({
    "access_key": key["AccessKeyId"],
    "secret_key": key["SecretAccessKey"],
    "user_arn": user["Arn"],
    "role_arn": role["Arn"],
    "writer_arn": writer["Arn"],
    "external_id": EXTERNAL_ID,
    "tenant_b_arn": tenant_b["Arn"],
    "tenant_b_external_id": TENANT_B_EXTERNAL_ID,
    "kms_key_arn": kms_key,
}))
