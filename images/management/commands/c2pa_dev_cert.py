"""`manage.py c2pa_dev_cert DIR`: a development C2PA signing certificate (issue 25).

Writes DIR/c2pa-dev-chain.pem (an ES256 end-entity certificate for C2PA signing, then
the throwaway root CA that issued it) and DIR/c2pa-dev-key.pem (its P-256 private key,
PKCS#8, mode 0600), and prints the two settings that use them:

    OUTPUT_C2PA_CERT=DIR/c2pa-dev-chain.pem OUTPUT_C2PA_KEY=DIR/c2pa-dev-key.pem

For trying C2PA out only: manifests signed with it validate (c2pa-python's Reader says
"Valid") but are not "Trusted" by any verifier, because its root is on no trust list. A
production deployment signs with a certificate from a CA on the C2PA trust list
(docs/operations.md, "Provenance").

The end-entity certificate follows the C2PA claim-signing profile: not a CA, key usage
digitalSignature, extended key usage emailProtection, subject and authority key ids.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

CHAIN_NAME = "c2pa-dev-chain.pem"
KEY_NAME = "c2pa-dev-key.pem"


def dev_certificate(*, organization: str, days: int) -> tuple[bytes, bytes]:
    """(the PEM chain: signer then root, the signer's PEM private key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    usage = dict(
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )
    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"{organization} development root (not trusted)"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
        ]
    )
    root = (
        x509.CertificateBuilder()
        .subject_name(root_name)
        .issuer_name(root_name)
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days + 1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=False, key_cert_sign=True, crl_sign=True, **usage), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"{organization} C2PA signer (development)"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
        ]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(root_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False, **usage), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    chain = certificate.public_bytes(serialization.Encoding.PEM) + root.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return chain, key_pem


class Command(BaseCommand):
    help = "Make a development C2PA signing certificate chain and key (not trusted; for trying C2PA out)."

    def add_arguments(self, parser):
        parser.add_argument("directory", help="where to write c2pa-dev-chain.pem and c2pa-dev-key.pem")
        parser.add_argument("--organization", default="Image platform", help="the O= of both certificates")
        parser.add_argument("--days", type=int, default=365, help="how long the signer certificate is valid")
        parser.add_argument("--force", action="store_true", help="overwrite existing files")

    def handle(self, *args, directory, organization, days, force, **options):
        if days < 1:
            raise CommandError("--days must be at least 1.")
        folder = Path(directory).expanduser().resolve()
        folder.mkdir(parents=True, exist_ok=True)
        chain_path, key_path = folder / CHAIN_NAME, folder / KEY_NAME
        if not force and (chain_path.exists() or key_path.exists()):
            raise CommandError(f"{chain_path} or {key_path} exists; pass --force to replace them.")
        chain, key_pem = dev_certificate(organization=organization, days=days)
        chain_path.write_bytes(chain)
        descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(key_pem)
        self.stdout.write(f"OUTPUT_C2PA_CERT={chain_path}\nOUTPUT_C2PA_KEY={key_path}")
