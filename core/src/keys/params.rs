//! Per-algorithm parameters for the aws-lc-rs backends.

use aws_lc_rs::hmac;
use aws_lc_rs::signature as lc;

use crate::alg::Algorithm;
use crate::error::{Error, KeyError};

pub(super) fn hmac_alg(alg: Algorithm) -> Result<hmac::Algorithm, KeyError> {
    match alg {
        Algorithm::HS256 => Ok(hmac::HMAC_SHA256),
        Algorithm::HS384 => Ok(hmac::HMAC_SHA384),
        Algorithm::HS512 => Ok(hmac::HMAC_SHA512),
        _ => Err(KeyError::AlgorithmNotAllowed),
    }
}

pub(super) fn hmac_len(alg: Algorithm) -> usize {
    match alg {
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => 32,
    }
}

pub(super) fn rsa_slot(alg: Algorithm) -> usize {
    match alg {
        Algorithm::RS384 => 1,
        Algorithm::RS512 => 2,
        _ => 0,
    }
}

pub(super) fn rsa_params(alg: Algorithm) -> Result<&'static lc::RsaParameters, KeyError> {
    match alg {
        Algorithm::RS256 => Ok(&lc::RSA_PKCS1_2048_8192_SHA256),
        Algorithm::RS384 => Ok(&lc::RSA_PKCS1_2048_8192_SHA384),
        Algorithm::RS512 => Ok(&lc::RSA_PKCS1_2048_8192_SHA512),
        _ => Err(KeyError::AlgorithmNotAllowed),
    }
}

pub(super) fn rsa_encoding(alg: Algorithm) -> Result<&'static dyn lc::RsaEncoding, Error> {
    match alg {
        Algorithm::RS256 => Ok(&lc::RSA_PKCS1_SHA256),
        Algorithm::RS384 => Ok(&lc::RSA_PKCS1_SHA384),
        Algorithm::RS512 => Ok(&lc::RSA_PKCS1_SHA512),
        _ => Err(KeyError::AlgorithmNotAllowed.into()),
    }
}
