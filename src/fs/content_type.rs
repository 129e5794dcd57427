//! The Content-Type an object is given, as s3fs-fuse and mountpoint-s3 give
//! it: from its file's extension, so that a browser opening a presigned URL,
//! a static site or a CDN in front of the bucket serves it as what it is.

/// What s3fs-fuse gives a directory's marker object.
pub const DIRECTORY: &str = "application/x-directory";

/// The type of a file whose extension tells none.
pub const UNKNOWN: &str = "application/octet-stream";

/// The type a file named `key` is uploaded with.
pub fn of_file(key: &str) -> &'static str {
    let name = key.rsplit('/').next().unwrap_or(key);
    mime_guess::from_path(name).first_raw().unwrap_or(UNKNOWN)
}

/// Whether a file renamed from `from` to `to` takes the type of its new
/// extension: only when the extension changes (`notes.txt` to `notes.md`),
/// so an object keeps a type another tool gave it through any other rename.
pub fn changes_on_rename(from: &str, to: &str) -> bool {
    extension(from) != extension(to)
}

/// The extension of the file named by `key`, in lower case.
fn extension(key: &str) -> Option<String> {
    let name = key.rsplit('/').next().unwrap_or(key);
    std::path::Path::new(name)
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_files_type_comes_from_its_extension() {
        assert_eq!(of_file("site/index.html"), "text/html");
        assert_eq!(of_file("data/a.JSON"), "application/json");
        assert_eq!(of_file("img/logo.png"), "image/png");
        assert_eq!(of_file("notes.txt"), "text/plain");
        assert_eq!(of_file("archive.tar.gz"), "application/gzip");
        // No extension, an unknown one, a dot file, a dot in a directory.
        assert_eq!(of_file("bin/tool"), UNKNOWN);
        assert_eq!(of_file("x.s3volunknown"), UNKNOWN);
        assert_eq!(of_file(".bashrc"), UNKNOWN);
        assert_eq!(of_file("v1.2/readme"), UNKNOWN);
    }

    #[test]
    fn a_rename_retypes_only_when_the_extension_changes() {
        assert!(!changes_on_rename("a/x.html", "b/y.HTML"));
        assert!(!changes_on_rename("a/tool", "b/tool2"));
        assert!(changes_on_rename("notes.txt", "notes.md"));
        assert!(changes_on_rename("page", "page.html"));
        assert!(changes_on_rename("v1.2/readme", "v1.2/readme.txt"));
    }
}
