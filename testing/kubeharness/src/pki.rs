//! The cluster's certificates and keys, made fresh for each cluster.
//!
//! One certificate authority signs the API server's serving certificate and every client
//! certificate. A client's identity is its certificate's subject, as in any cluster: the common
//! name is the user, the organizations are its groups. So the admin is in `system:masters`, the
//! controller manager and the scheduler are the users the default RBAC policy names, and each
//! Node's kubelet is `system:node:NAME` in `system:nodes`, which the Node authorizer checks.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::Result;

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct CertPair {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

/// The cluster's certificate authority.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM: what clients trust and what the API server checks clients with.
    pub cert_pem: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").finish_non_exhaustive()
    }
}

impl Authority {
    /// A new self-signed authority.
    ///
    /// # Errors
    ///
    /// When key generation or signing fails.
    pub fn new() -> Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "roomshard-test-ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        Ok(Authority {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A serving certificate for `names` (DNS names) and `ips`.
    ///
    /// # Errors
    ///
    /// When key generation or signing fails.
    pub fn server(&self, common_name: &str, names: &[&str], ips: &[IpAddr]) -> Result<CertPair> {
        let mut sans: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        sans.extend(ips.iter().map(IpAddr::to_string));
        let mut params = CertificateParams::new(sans)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate for user `user` in `groups`.
    ///
    /// # Errors
    ///
    /// When key generation or signing fails.
    pub fn client(&self, user: &str, groups: &[&str]) -> Result<CertPair> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, user);
        for group in groups {
            params
                .distinguished_name
                .push(DnType::OrganizationName, *group);
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Result<CertPair> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The key pair the API server signs service-account tokens with (and checks them against).
#[derive(Debug, Clone)]
pub struct SigningKey {
    /// The private key, PKCS#8 PEM.
    pub private_pem: String,
    /// The public key, PKIX PEM.
    pub public_pem: String,
}

impl SigningKey {
    /// A new ECDSA P-256 key.
    ///
    /// # Errors
    ///
    /// When key generation fails.
    pub fn new() -> Result<Self> {
        let key = KeyPair::generate()?;
        Ok(SigningKey {
            private_pem: key.serialize_pem(),
            public_pem: key.public_key_pem(),
        })
    }
}
