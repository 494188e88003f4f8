//! The declaration of a group of properties: [`property_group!`] turns one line per
//! property into the typed field, the [`Prop`](super::Prop) row and the builder setter.
//!
//! ```text
//! property_group! {
//!     /// The settings of memory-backend-file.
//!     pub struct FileConfig in kind File {
//!         /// offset into the file
//!         OFFSET offset: u64 = "offset", live Fixed, default |_, _| 0;
//!     }
//! }
//! ```
//!
//! `in common` stores the group in [`Config::common`](super::Config), `in kind V` in the
//! variant `V` of [`KindConfig`](crate::kind::KindConfig); a group kept elsewhere (a part
//! two kinds share) implements [`Group`] itself. `required,` before the default marks a
//! property that must be set before allocation. `min N` refuses integers below N with
//! QEMU's message; `arg T` lets the builder setter take `T` (converted with `Into`).

use super::Config;

/// Where a group of properties lives in a [`Config`]: absent for kinds without it.
pub(crate) trait Group: Sized {
    /// The group in `c`, if `c`'s kind has it.
    fn of(c: &Config) -> Option<&Self>;
    /// The group in `c`, writable.
    fn of_mut(c: &mut Config) -> Option<&mut Self>;
}

/// The builder setter's argument type: the field's own type unless `arg T` says.
macro_rules! setter_arg {
    ($ty:ty) => {
        $ty
    };
    ($ty:ty, $arg:ty) => {
        $arg
    };
}
pub(crate) use setter_arg;

/// Declares a group of properties; see the module documentation.
macro_rules! property_group {
    (
        $(#[$meta:meta])*
        pub struct $group:ident in common { $($body:tt)* }
    ) => {
        $crate::props::group::property_group!(@struct $(#[$meta])* $group { $($body)* });
        impl $crate::props::group::Group for $group {
            fn of(c: &$crate::props::Config) -> Option<&Self> {
                Some(&c.common)
            }
            fn of_mut(c: &mut $crate::props::Config) -> Option<&mut Self> {
                Some(&mut c.common)
            }
        }
    };
    (
        $(#[$meta:meta])*
        pub struct $group:ident in kind $variant:ident { $($body:tt)* }
    ) => {
        $crate::props::group::property_group!(@struct $(#[$meta])* $group { $($body)* });
        impl $crate::props::group::Group for $group {
            fn of(c: &$crate::props::Config) -> Option<&Self> {
                match &c.kind {
                    $crate::kind::KindConfig::$variant(g) => Some(g),
                    #[allow(unreachable_patterns)]
                    _ => None,
                }
            }
            fn of_mut(c: &mut $crate::props::Config) -> Option<&mut Self> {
                match &mut c.kind {
                    $crate::kind::KindConfig::$variant(g) => Some(g),
                    #[allow(unreachable_patterns)]
                    _ => None,
                }
            }
        }
    };
    (@struct
        $(#[$meta:meta])*
        $group:ident {
            $(
                #[doc = $doc:literal]
                $konst:ident $field:ident: $ty:ty = $name:literal,
                    live $live:ident, $(required$req:vis,)?
                    default |$k:pat_param, $m:pat_param| $default:expr
                    $(, min $min:literal)? $(, arg $arg:ty)?;
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $group {
            $( #[doc = $doc] pub $field: $ty, )*
        }

        impl $group {
            $(
                #[doc = concat!("The `", $name, "` property:", $doc)]
                pub const $konst: $crate::props::Prop = $crate::props::Prop {
                    name: $name,
                    ty: <$ty as $crate::props::Value>::TYPE,
                    live: $crate::props::Live::$live,
                    doc: $doc,
                    min: 0 $(+ $min)?,
                    required: false $(|| { stringify!($req); true })?,
                    get: |c| {
                        <$group as $crate::props::group::Group>::of(c)
                            .map(|g| $crate::props::Value::to_value(&g.$field))
                    },
                    put: |c, v| {
                        let g = <$group as $crate::props::group::Group>::of_mut(c)?;
                        g.$field = <$ty as $crate::props::Value>::from_value(v)?;
                        Some(())
                    },
                };
            )*

            /// Every property of the group, in declaration order.
            pub const PROPS: &'static [$crate::props::Prop] = &[$(Self::$konst),*];

            /// The group at its defaults for `kind` and the machine-wide defaults.
            #[allow(unused_variables)]
            pub(crate) fn defaults(
                kind: $crate::kind::Kind,
                machine: &$crate::props::MachineDefaults,
            ) -> Self {
                Self {
                    $( $field: (|$k: $crate::kind::Kind,
                                 $m: &$crate::props::MachineDefaults| -> $ty { $default })(
                        kind, machine,
                    ), )*
                }
            }
        }

        impl $crate::backend::Builder {
            $(
                #[doc = concat!("Sets `", $name, "`:", $doc)]
                pub fn $field(
                    self,
                    v: $crate::props::group::setter_arg!($ty $(, $arg)?),
                ) -> Self {
                    let v: $ty = v.into();
                    self.with(&$group::$konst, $crate::props::Value::to_value(&v))
                }
            )*
        }
    };
}
pub(crate) use property_group;
