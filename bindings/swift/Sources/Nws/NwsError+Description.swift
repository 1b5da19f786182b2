// Hand-written (scripts/gen-bindings.sh does not touch this file). Not compiled on the
// project's Linux machine (no Swift toolchain): see docs/MOBILE.md, "Verified here".
//
// The generated `NwsError` has `description` (the library's Rust `Display`: the whole
// sentence, the `detail` field) but does not declare the conformance. Declaring it makes
// `String(describing:)`, `print(error)` and the generated `LocalizedError.errorDescription`
// (which is `String(reflecting: self)`) return that sentence instead of a dump of the enum.

extension NwsError: CustomStringConvertible {}
