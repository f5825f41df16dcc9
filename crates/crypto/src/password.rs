//! Argon2id password hashing for user passwords only (never for client secrets: those are
//! 256-bit random values compared by digest).
//!
//! Each hash fills `m` KiB of memory (19 MiB with the OWASP baseline). Allocating that per
//! check is what let a burst of logins grow a process to gigabytes: nothing bounded how many
//! ran at once, and glibc keeps freed blocks of that size. So the work happens in a
//! [`Workspace`] that owns its memory and reuses it for every hash, and workspaces live only
//! on the fixed threads of [`crate::password_pool::PasswordPool`] (DESIGN.md rule 8).

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use rand::RngCore as _;
use subtle::ConstantTimeEq as _;

/// OWASP's Argon2id baseline: m = 19 MiB, t = 2, p = 1, a 32-byte output.
pub fn default_params() -> Params {
    Params::new(19 * 1024, 2, 1, Some(Params::DEFAULT_OUTPUT_LEN)).unwrap_or_default()
}

/// The most memory a stored hash may ask for (KiB). Hashes made here use
/// [`default_params`]; a hash imported from elsewhere with a larger `m` still verifies,
/// with a buffer of its own for that one check, up to this much. Above it (or above
/// [`MAX_PASSES`] or [`MAX_LANES`]) the check is refused as [`HashError::TooCostly`] rather
/// than letting one stored value claim unbounded memory or pin a worker.
pub const MAX_MEMORY_KIB: u32 = 64 * 1024;
/// The most passes (`t`) a stored hash may ask for.
pub const MAX_PASSES: u32 = 10;
/// The most lanes (`p`) a stored hash may ask for.
pub const MAX_LANES: u32 = 8;

/// Allocations at least this large (in blocks of 1 KiB) are served by glibc with a mapping
/// of their own and unmapped when freed: above its largest dynamic mmap threshold (32 MiB)
/// it never carves them from an arena it keeps. Reserving that much costs address space
/// only; resident memory is the pages a hash touches.
const OWN_MAPPING_BLOCKS: usize = 33 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("password hashing failed")]
    Failed,
    #[error(
        "the stored password hash asks for more than {MAX_MEMORY_KIB} KiB, {MAX_PASSES} passes or {MAX_LANES} lanes"
    )]
    TooCostly,
}

/// One thread's Argon2 state: the parameters of new hashes and the memory every hash
/// reuses. Not `Sync`: one workspace per worker thread.
pub struct Workspace {
    params: Params,
    memory: Vec<Block>,
}

impl Workspace {
    /// A workspace for `params`; it allocates on its first hash.
    pub fn new(params: Params) -> Self {
        Self { params, memory: Vec::new() }
    }

    /// Hashes a new password into a PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`).
    pub fn hash(&mut self, password: &[u8]) -> Result<String, HashError> {
        let mut salt = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        let salt_string = SaltString::encode_b64(&salt).map_err(|_| HashError::Failed)?;
        let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
        let params = self.params.clone();
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        argon
            .hash_password_into_with_memory(password, &salt, &mut out, self.blocks(params.block_count()))
            .map_err(|_| HashError::Failed)?;
        let phc = PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(&params).map_err(|_| HashError::Failed)?,
            salt: Some(salt_string.as_salt()),
            hash: Some(Output::new(&out).map_err(|_| HashError::Failed)?),
        };
        Ok(phc.to_string())
    }

    /// Verifies `password` against a PHC string, with the algorithm, version, parameters,
    /// salt and output length the string names. A malformed hash verifies nothing.
    pub fn verify(&mut self, password: &[u8], phc: &str) -> Result<bool, HashError> {
        let Ok(parsed) = PasswordHash::new(phc) else { return Ok(false) };
        let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else { return Ok(false) };
        let Ok(algorithm) = Algorithm::try_from(parsed.algorithm) else { return Ok(false) };
        let version = match parsed.version.map(Version::try_from).transpose() {
            Ok(v) => v.unwrap_or_default(),
            Err(_) => return Ok(false),
        };
        let Ok(params) = Params::try_from(&parsed) else { return Ok(false) };
        if params.m_cost() > MAX_MEMORY_KIB || params.t_cost() > MAX_PASSES || params.p_cost() > MAX_LANES {
            return Err(HashError::TooCostly);
        }
        let mut salt_buf = [0u8; 64];
        let Ok(salt) = salt.decode_b64(&mut salt_buf) else { return Ok(false) };
        let mut out = [0u8; Output::MAX_LENGTH];
        let out = &mut out[..expected.len()];
        let argon = Argon2::new(algorithm, version, params.clone());
        let blocks = params.block_count();
        let hashed = if blocks <= self.params.block_count() {
            argon.hash_password_into_with_memory(password, salt, out, self.blocks(blocks))
        } else {
            // A hash from elsewhere with a larger `m`: its own buffer, freed right after.
            argon.hash_password_into_with_memory(password, salt, out, allocate(blocks))
        };
        if hashed.is_err() {
            return Ok(false);
        }
        Ok(bool::from(out.ct_eq(expected.as_bytes())))
    }

    /// Spends the work of a real verification, for unknown users, so the response time
    /// does not reveal whether a username exists.
    pub fn spend(&mut self, password: &[u8]) {
        const SALT: &[u8; 16] = b"tessera-dummy-sa";
        let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
        let params = self.params.clone();
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
        let _ = argon.hash_password_into_with_memory(password, SALT, &mut out, self.blocks(params.block_count()));
    }

    /// Whether this workspace holds its memory (between its first hash and [`Self::release`]).
    pub fn holds_memory(&self) -> bool {
        !self.memory.is_empty()
    }

    /// Gives the memory back to the system; the next hash allocates it again.
    pub fn release(&mut self) {
        self.memory = Vec::new();
    }

    /// The reused memory, at least `count` blocks; only called with `count` up to the
    /// workspace's own parameters, so it never grows past them.
    fn blocks(&mut self, count: usize) -> &mut [Block] {
        if self.memory.len() < count {
            self.memory = allocate(self.params.block_count().max(count));
        }
        &mut self.memory[..count]
    }
}

/// `count` zeroed Argon2 blocks in an allocation the allocator returns to the system when
/// it is dropped (see [`OWN_MAPPING_BLOCKS`]).
fn allocate(count: usize) -> Vec<Block> {
    let mut memory = Vec::with_capacity(count.max(OWN_MAPPING_BLOCKS));
    memory.resize(count, Block::default());
    memory
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};

    fn reference_hash(password: &str, params: Params) -> String {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(password.as_bytes(), &salt)
            .unwrap()
            .to_string()
    }

    #[test]
    fn a_hash_made_here_is_standard_argon2id_that_the_argon2_crate_verifies() {
        let mut ws = Workspace::new(default_params());
        let h = ws.hash(b"correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        let parsed = PasswordHash::new(&h).unwrap();
        assert!(Argon2::default().verify_password(b"correct horse", &parsed).is_ok());
        assert!(Argon2::default().verify_password(b"correct horse!", &parsed).is_err());
        assert_ne!(ws.hash(b"correct horse").unwrap(), h, "each hash has its own salt");
    }

    #[test]
    fn hashes_made_by_the_argon2_crate_verify_with_reused_memory() {
        let mut ws = Workspace::new(default_params());
        let h = reference_hash("correct horse", default_params());
        for _ in 0..2 {
            assert!(ws.verify(b"correct horse", &h).unwrap());
            assert!(!ws.verify(b"correct horse!", &h).unwrap());
        }
        assert!(ws.holds_memory());
        ws.release();
        assert!(!ws.holds_memory());
        assert!(ws.verify(b"correct horse", &h).unwrap());
    }

    #[test]
    fn other_parameters_variants_and_output_lengths_verify_as_the_string_says() {
        let mut ws = Workspace::new(default_params());
        let cases = [
            ("smaller memory, more passes", "x", Algorithm::Argon2id, Params::new(8 * 1024, 3, 1, None)),
            ("two lanes, 16-byte output", "y", Algorithm::Argon2id, Params::new(4 * 1024, 2, 2, Some(16))),
            ("argon2i", "z", Algorithm::Argon2i, Params::new(4 * 1024, 2, 1, None)),
            ("larger memory than the workspace's", "w", Algorithm::Argon2id, Params::new(24 * 1024, 1, 1, None)),
        ];
        for (what, password, alg, params) in cases {
            let params = params.unwrap();
            let salt = SaltString::generate(&mut rand::rngs::OsRng);
            let h = Argon2::new(alg, Version::V0x13, params).hash_password(password.as_bytes(), &salt).unwrap();
            let h = h.to_string();
            assert!(ws.verify(password.as_bytes(), &h).unwrap(), "{what}: right password");
            assert!(!ws.verify(b"wrong", &h).unwrap(), "{what}: wrong password");
        }
        assert_eq!(ws.memory.len(), default_params().block_count(), "a larger hash did not grow the workspace");
    }

    #[test]
    fn malformed_hashes_verify_nothing_and_excessive_ones_are_refused() {
        let mut ws = Workspace::new(default_params());
        for bad in ["", "not a hash", "$argon2id$v=19$m=19456,t=2,p=1$", "$pbkdf2$i=1$c2FsdHNhbHQ$aGFzaA"] {
            assert!(!ws.verify(b"x", bad).unwrap(), "{bad:?}");
        }
        for costly in
            ["m=4194304,t=1,p=1", "m=65537,t=1,p=1", "m=8192,t=4294967295,p=1", "m=8192,t=11,p=1", "m=8192,t=1,p=9"]
        {
            let phc = format!("$argon2id$v=19${costly}$c2FsdHNhbHRzYWx0$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
            assert!(matches!(ws.verify(b"x", &phc), Err(HashError::TooCostly)), "{costly}");
        }
        assert!(!ws.holds_memory(), "nothing was allocated for a refused hash");
    }
}
