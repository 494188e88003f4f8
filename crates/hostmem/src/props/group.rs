//! The declaration of a group of properties: [`property_group!`] turns one line per
//! property into the typed field and the [`Prop`](super::Prop) row (name, type, when it
//! may change, doc, minimum, and how to read and write it in a backend's settings).
//! The builder's typed setters are written out in `backend/builder.rs`, where a reader
//! can find them.
//!
//! ```text
//! property_group! {
//!     /// The settings of memory-backend-file.
//!     pub struct FileConfig in kind {
//!         /// offset into the file
//!         OFFSET offset: u64 = "offset", live Fixed, default |_, _| 0;
//!     }
//! }
//! ```
//!
//! `in common` stores the group as the settings' common part, `in kind` as the kind's
//! own group (found by its type: [`Settings::kind_group`](super::Settings)); a group
//! kept elsewhere implements [`Group`] itself. `required,` before the default marks a
//! property that must be set before allocation. `min N` refuses integers below N with
//! QEMU's message. The default is `|shared_by_default, machine| value`: the kind's share
//! default and the machine-wide defaults.

use super::Settings;

/// Where a group of properties lives in a backend's [`Settings`]: absent for kinds
/// without it.
pub(crate) trait Group: Sized {
    /// The group in `c`, if `c`'s kind has it.
    fn of(c: &dyn Settings) -> Option<&Self>;
    /// The group in `c`, writable.
    fn of_mut(c: &mut dyn Settings) -> Option<&mut Self>;
}

/// Declares a group of properties; see the module documentation.
macro_rules! property_group {
    (
        $(#[$meta:meta])*
        pub struct $group:ident in common { $($body:tt)* }
    ) => {
        $crate::props::group::property_group!(@struct $(#[$meta])* $group { $($body)* });
        impl $crate::props::group::Group for $group {
            fn of(c: &dyn $crate::props::Settings) -> Option<&Self> {
                Some(c.common())
            }
            fn of_mut(c: &mut dyn $crate::props::Settings) -> Option<&mut Self> {
                Some(c.common_mut())
            }
        }
    };
    (
        $(#[$meta:meta])*
        pub struct $group:ident in kind { $($body:tt)* }
    ) => {
        $crate::props::group::property_group!(@struct $(#[$meta])* $group { $($body)* });
        impl $crate::props::group::Group for $group {
            fn of(c: &dyn $crate::props::Settings) -> Option<&Self> {
                c.kind_group().downcast_ref()
            }
            fn of_mut(c: &mut dyn $crate::props::Settings) -> Option<&mut Self> {
                c.kind_group_mut().downcast_mut()
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
                    $(, min $min:literal)?;
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
                shared_by_default: bool,
                machine: &$crate::props::MachineDefaults,
            ) -> Self {
                Self {
                    $( $field: (|$k: bool,
                                 $m: &$crate::props::MachineDefaults| -> $ty { $default })(
                        shared_by_default, machine,
                    ), )*
                }
            }
        }
    };
}
pub(crate) use property_group;
