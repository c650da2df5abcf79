// undici publishes types for its index only; src/transfer/undici.ts gives each of these files the index's type.
declare module "undici/lib/*";
